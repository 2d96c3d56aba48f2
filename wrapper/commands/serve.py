"""`ftw modelfile`, `smoke`, `answers`, `ollama`, `chat`, `lmstudio`, `serve`: running the GGUF."""

from __future__ import annotations

from pathlib import Path

import click

from wrapper.commands.options import force_option, quant_option, run_option, writes_run
from wrapper.core.manifest import run_dir_of
from wrapper.serve.chat import chat as chat_session
from wrapper.serve.lmstudio import place
from wrapper.serve.modelfile import ollama_create, write_modelfile
from wrapper.serve.server import DEFAULT_HOST, DEFAULT_PORT
from wrapper.serve.server import serve as serve_run
from wrapper.serve.smoke import compare_with_base
from wrapper.serve.smoke import smoke as smoke_run


@click.command()
@run_option
@quant_option(help="Which quantized GGUF the Modelfile uses.")
@force_option
@writes_run
def modelfile(run: str, quant: str, force: bool) -> None:
    """Write an Ollama Modelfile for the run's quantized GGUF, checked with Go's text/template as Ollama renders it.

    \b
    Example:
      ftw modelfile --run demo
    """
    write_modelfile(run_dir_of(run), quant.upper(), force=force)


@click.command()
@run_option
@quant_option()
@writes_run
def smoke(run: str, quant: str) -> None:
    """Ask the recipe's check prompts to the quantized GGUF in llama.cpp.

    \b
    Example:
      ftw smoke --run demo
    """
    smoke_run(run_dir_of(run), quant.upper())


@click.command()
@run_option
@quant_option()
def answers(run: str, quant: str) -> None:
    """Table of the check prompts: base model beside the fine-tuned quantized GGUF.

    \b
    Example:
      ftw answers --run demo
    """
    compare_with_base(run_dir_of(run), quant.upper())


@click.command()
@run_option
def ollama(run: str) -> None:
    """Run `ollama create` from the run's Modelfile, or print the command where Ollama is absent.

    \b
    Example:
      ftw ollama --run demo
    """
    ollama_create(run_dir_of(run))


@click.command()
@run_option
@quant_option(help="Which quantized GGUF to talk to.")
@click.option(
    "--temperature",
    type=float,
    default=None,
    help="Override the recipe's temperature (0 = greedy). Other sampling settings come from the recipe.",
)
def chat(run: str, quant: str, temperature: float | None) -> None:
    """Chat with the run's GGUF in the terminal (llama.cpp, prompts in the training format, streamed).

    \b
    Example:
      ftw chat --run demo --temperature 0
    """
    chat_session(run_dir_of(run), quant.upper(), temperature)


@click.command()
@run_option
@quant_option(help="Which quantized GGUF to place.")
@click.option(
    "--dir",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="LM Studio's models folder (default: found under ~/.lmstudio or ~/.cache/lm-studio).",
)
@click.option("--copy", is_flag=True, help="Copy the file instead of linking it.")
def lmstudio(run: str, quant: str, models_dir: Path | None, copy: bool) -> None:
    """Put the run's GGUF into LM Studio's models folder (publisher/model/file.gguf), or say where it goes.

    \b
    Example:
      ftw lmstudio --run demo
    """
    place(run_dir_of(run), quant.upper(), models_dir, copy)


@click.command()
@run_option
@quant_option(help="Which quantized GGUF to serve.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True, help="The port to listen on."
)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="The address to listen on; 0.0.0.0 lets other machines reach it (no API key).",
)
def serve(run: str, quant: str, port: int, host: str) -> None:
    """Serve the run's GGUF with llama.cpp's llama-server: an OpenAI-compatible endpoint at http://HOST:PORT/v1.

    The prompt format is the chat template inside the GGUF (the training format); sampling
    defaults are the recipe's ollama.parameters. The server's output goes to runs/RUN/logs/server.log;
    Ctrl-C stops it.

    \b
    Example:
      ftw serve --run demo --port 8080
    """
    serve_run(run_dir_of(run), quant.upper(), host, port)


COMMANDS = [modelfile, smoke, answers, ollama, chat, lmstudio, serve]
