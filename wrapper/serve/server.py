"""`ftw serve`: llama.cpp's own llama-server on the run's quantized GGUF, an OpenAI-compatible endpoint.

llama-server builds every prompt with the chat template inside the GGUF (`--jinja`), which
`ftw gguf` made the training format (tests/test_llama_server.py asks the running server to
render the checked conversations and compares them byte for byte with LLaMA-Factory's). The
recipe's `ollama.parameters` become the server's defaults for every request (a request's own
values still win). Stop strings have no server flag: llama-server ends an answer at the GGUF's
end-of-generation tokens (the template's end-of-turn token and the eos, which `ftw gguf`
checked llama.cpp stops at) and at a request's own `stop`.

The server is a child in its own process group with its whole output in runs/RUN/logs/server.log;
it is bound to 127.0.0.1 unless another host is asked for, and it stops with ftw.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wrapper.config.ollama import check_parameters
from wrapper.core import artifacts, manifest, service
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import DEFAULT_QUANT, gguf_problem
from wrapper.core.llama_tools import tool
from wrapper.core.platform import ToolFolder

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # llama-server's own default (Ollama has 11434, LM Studio 1234)
DEFAULT_CONTEXT = 4096  # as Ollama and `ftw chat`; llama-server's own default is the model's whole context
LOG_NAME = "server.log"

# Ollama's parameter (config/ollama.py) -> llama-server's flag. Ollama's names are the recipe's.
SERVER_FLAGS = {
    "temperature": "--temp",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "typical_p": "--typical",
    "repeat_penalty": "--repeat-penalty",
    "repeat_last_n": "--repeat-last-n",
    "presence_penalty": "--presence-penalty",
    "frequency_penalty": "--frequency-penalty",
    "seed": "--seed",
    "num_predict": "--n-predict",
    "num_keep": "--keep",
    "num_ctx": "--ctx-size",
    "num_batch": "--batch-size",
    "num_gpu": "--n-gpu-layers",
    "main_gpu": "--main-gpu",
    "num_thread": "--threads",
}
# No flag: `stop` (llama-server stops at the GGUF's end-of-generation tokens and a request's `stop`);
# `use_mmap: false` is `--load-mode none`; true is llama-server's default.


@dataclass(frozen=True)
class ServerSettings:
    """Everything one llama-server is started with."""

    gguf: Path
    model_name: str  # what /v1/models lists and requests may name (--alias)
    log: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    context: int = DEFAULT_CONTEXT
    flags: tuple[tuple[str, str], ...] = ()  # (flag, value) from the recipe's parameters, -c aside
    stops: tuple[str, ...] = ()  # the recipe's stop strings: no server flag, named in the output
    run: str = "RUN"
    quant: str = DEFAULT_QUANT

    @property
    def address(self) -> service.Address:
        return service.Address(self.host, self.port, lambda host, port: self.command(port=port, host=host))

    @property
    def root(self) -> str:
        return self.address.root

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL."""
        return f"{self.root}/v1"

    def command(self, port: int | None = None, host: str | None = None) -> str:
        """The `ftw serve` line for these settings, on another port or host."""
        port, host = port or self.port, host or self.host
        line = f"ftw serve --run {self.run}" + (f" --quant {self.quant}" if self.quant != DEFAULT_QUANT else "")
        return line + (f" --host {host}" if host != DEFAULT_HOST else "") + f" --port {port}"

    @property
    def public(self) -> bool:
        return self.address.public

    @property
    def folder(self) -> ToolFolder:
        """Where llama-server runs, and names the GGUF from: the GGUF's folder."""
        return ToolFolder(self.gguf.parent)

    def argv(self, binary: Path) -> list[str]:
        argv = [str(binary), "--model", self.folder.arg(self.gguf), "--alias", self.model_name, "--jinja"]
        argv += ["--host", self.host, "--port", str(self.port), "--ctx-size", str(self.context)]
        for flag, value in self.flags:
            argv += [flag, value]
        return argv


def parameter_flags(parameters: list[tuple[str, str]]) -> tuple[int, tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(context, flags, stops) from the recipe's checked ollama.parameters."""
    context, flags, stops = DEFAULT_CONTEXT, [], []
    for key, value in parameters:
        if key == "num_ctx":
            context = int(value)
        elif key == "stop":
            stops.append(value)
        elif key == "use_mmap":
            if value == "false":
                flags.append(("--load-mode", "none"))
        else:
            flags.append((SERVER_FLAGS[key], value))
    return context, tuple(flags), tuple(stops)


def settings_for_run(
    run_dir: Path, quant: str = DEFAULT_QUANT, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> ServerSettings:
    """The server for a run's quantized GGUF, with the recipe's generation parameters."""
    plan = manifest.plan_of(run_dir)
    gguf = manifest.artifact(run_dir, artifacts.gguf(quant))
    parameters = check_parameters(
        plan.ollama_parameters, lambda key: f"{plan.recipe_file} (key 'ollama.parameters.{key}')"
    )
    context, flags, stops = parameter_flags(parameters)
    return ServerSettings(
        gguf=gguf,
        model_name=gguf.stem,
        log=run_dir / "logs" / LOG_NAME,
        host=host,
        port=port,
        context=context,
        flags=flags,
        stops=stops,
        run=run_dir.name,
        quant=quant,
    )


# ---- before starting -----------------------------------------------------------------


def check_port(settings: ServerSettings) -> None:
    """A port in use is a clear message now rather than a line in the server's log."""
    service.check_address(settings.address)


def check_gguf(path: Path, run: str) -> None:
    """llama-server would only say "failed to load model"; say what the file is instead."""
    problem = gguf_problem(path)
    if problem is not None:
        raise FtwError(f"{path} {problem}. Make it again with: ftw gguf --run {run} --force")


# ---- the running server --------------------------------------------------------------


@dataclass
class Server:
    """A started llama-server: its settings and process. As a context manager it stops on exit."""

    settings: ServerSettings
    child: service.Service

    @property
    def process(self) -> subprocess.Popen:
        return self.child.process

    @property
    def url(self) -> str:
        return self.settings.base_url

    @property
    def root(self) -> str:
        return self.settings.root

    def stop(self) -> None:
        self.child.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start(settings: ServerSettings, binary: Path | None = None, timeout_s: float | None = None) -> Server:
    """Start llama-server and return it once /health answers (200 once the model is loaded); stopped
    again if that fails or is interrupted.

    with start(settings_for_run(run_dir, port=8081)) as server:
        urllib.request.urlopen(f"{server.url}/models")
    """
    check_port(settings)
    argv = settings.argv(binary or tool("llama-server"))
    status = f"llama-server is loading {settings.gguf.name} (log: {settings.log})"
    health = f"{settings.root}/health"
    child = service.start("llama-server", argv, settings.log, health, status, timeout_s, settings.folder.cwd)
    return Server(settings, child)


# ---- `ftw serve` ---------------------------------------------------------------------


def serve(
    run_dir: Path,
    on_ready: Callable[[ServerSettings], None],
    quant: str = DEFAULT_QUANT,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> None:
    """Start llama-server on the run's GGUF, call `on_ready` once it answers, and wait for Ctrl-C."""
    settings = settings_for_run(run_dir, quant, host, port)
    check_port(settings)  # before a first build of llama-server, which takes minutes
    check_gguf(settings.gguf, run_dir.name)
    server = start(settings)
    try:
        on_ready(settings)
        service.wait(server.child)
    finally:
        server.stop()
