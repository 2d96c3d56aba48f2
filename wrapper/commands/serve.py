"""`ftw modelfile`, `smoke`, `answers`, `ollama`, `chat`, `lmstudio`, `serve`: running the GGUF."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from wrapper.commands.options import force_option, quant_option, run_option, writes_run
from wrapper.core import artifacts, manifest
from wrapper.core.errors import FtwError
from wrapper.core.manifest import run_dir_of
from wrapper.core.ui import console, done
from wrapper.serve.chat import open_chat
from wrapper.serve.lmstudio import PUBLISHER, place
from wrapper.serve.modelfile import ollama_create, ollama_model_name, write_modelfile
from wrapper.serve.server import DEFAULT_HOST, DEFAULT_PORT, ServerSettings
from wrapper.serve.server import serve as serve_run
from wrapper.serve.smoke import compare_with_base
from wrapper.serve.smoke import smoke as smoke_run

CHAT_KEYS = "/reset forgets the conversation, /exit (or Ctrl-D) leaves"


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
    run_dir, quant = run_dir_of(run), quant.upper()
    plan = manifest.plan_of(run_dir)
    if not plan.checks:
        console.print("The recipe has no check prompts (`checks:`); nothing to ask.")
        return
    answers = smoke_run(run_dir, quant)
    table = Table(title=f"{plan.run}: {quant} GGUF in llama.cpp", show_lines=True)
    for column in ("prompt", "expected", "answer", "ok"):
        table.add_column(column)
    for answer in answers:
        table.add_row(answer.prompt, answer.expect, answer.text, "✓" if answer.passed else "✗")
    console.print(table)
    failed = [a for a in answers if not a.passed]
    if failed:
        raise FtwError(
            f"{len(failed)} of {len(answers)} check prompts did not get the expected answer "
            f"from the {quant} GGUF (it was written; the checks are in {plan.recipe_file})."
        )
    done(f"all {len(answers)} check prompts answered as expected by the {quant} GGUF")


@click.command()
@run_option
@quant_option()
def answers(run: str, quant: str) -> None:
    """Table of the check prompts: base model beside the fine-tuned quantized GGUF.

    \b
    Example:
      ftw answers --run demo
    """
    run_dir, quant = run_dir_of(run), quant.upper()
    base, tuned = compare_with_base(run_dir, quant)
    title = f"{manifest.plan_of(run_dir).run}: base model vs fine-tuned {quant} GGUF (greedy, training format)"
    table = Table(title=title, show_lines=True)
    for column in ("question", "base model", f"fine-tuned {quant}", "ok"):
        table.add_column(column)
    for before, after in zip(base, tuned):
        table.add_row(after.prompt, before.text, after.text, "✓" if after.passed else "✗")
    console.print(table)
    passed = sum(a.passed for a in tuned)
    gguf = manifest.artifact(run_dir, artifacts.gguf(quant))
    console.print(
        f"{passed}/{len(tuned)} trained answers reproduced by {gguf.name}"
        f" (base model: {sum(b.passed for b in base)}/{len(base)})."
    )


@click.command()
@run_option
def ollama(run: str) -> None:
    """Run `ollama create` from the run's Modelfile, or print the command where Ollama is absent.

    \b
    Example:
      ftw ollama --run demo
    """
    run_dir = run_dir_of(run)
    name = ollama_create(run_dir)
    if name is None:
        name = ollama_model_name(run_dir.name)
        console.print("Ollama is not installed here. On the machine that has it, run:")
        console.print(f"  cd {run_dir} && ollama create {name} -f Modelfile && ollama run {name}", soft_wrap=True)
        return
    done(f"ollama model '{name}' created; try: ollama run {name}")


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
    run_dir, quant = run_dir_of(run), quant.upper()
    plan = manifest.plan_of(run_dir)
    gguf = manifest.artifact(run_dir, artifacts.gguf(quant))
    session = open_chat(run_dir, quant, temperature)
    interactive = sys.stdin.isatty()
    console.print(
        f"{plan.run}: {gguf.name} in llama.cpp, prompts in LLaMA-Factory's '{plan.template}' format. {CHAT_KEYS}.",
        soft_wrap=True,
    )
    try:
        while True:
            try:
                line = input(">>> ") if interactive else read_piped()
            except EOFError:
                break
            if line.strip() in ("/exit", "/bye", "/quit"):
                break
            if line.strip() == "/reset":
                session.turns = []
                console.print("(conversation forgotten)")
                continue
            session.reply(line, write=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
            sys.stdout.write("\n\n")
            sys.stdout.flush()
    finally:
        session.close()


def read_piped() -> str:
    """A line from a pipe, echoed so that the transcript shows what was asked."""
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    line = line.rstrip("\n")
    sys.stdout.write(f">>> {line}\n")
    return line


PLACED_AS = {"symbolic link": "linked", "hard link": "hard-linked", "copy": "copied"}
PLACED_NOTE = {
    "symbolic link": " -> {gguf}",
    "hard link": " (the same file as {gguf}: this system refused a symbolic link; Windows makes them "
    "with Developer Mode on)",
    "copy": " (no link could be made here: another drive, or a file system without links)",
}


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
    run_dir = run_dir_of(run)
    placed = place(run_dir, quant.upper(), models_dir, copy)
    if placed.target is None:
        console.print("No LM Studio models folder here (looked for ~/.lmstudio/models and ~/.cache/lm-studio/models).")
        console.print(
            f"On the machine with LM Studio, put the file at <models folder>/{placed.relative}", soft_wrap=True
        )
        console.print(f"  file: {placed.gguf}", soft_wrap=True)
        console.print("  (the models folder is shown in LM Studio under My Models; or run this with --dir FOLDER)")
        return
    if placed.already:
        done(f"LM Studio already sees {placed.target} -> {placed.gguf}")
        return
    note = "" if copy else PLACED_NOTE[placed.how].format(gguf=placed.gguf)
    done(f"{PLACED_AS[placed.how]} for LM Studio: {placed.target}{note}")
    console.print(
        f"In LM Studio: My Models shows {PUBLISHER}/{run_dir.name}; its prompt format comes from the "
        f"chat template inside the file (the training format, written by `ftw gguf`).",
        soft_wrap=True,
    )


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
    serve_run(run_dir_of(run), show_usage, quant.upper(), host, port)


def show_usage(settings: ServerSettings) -> None:
    url = settings.base_url
    done(f"llama-server is serving {settings.gguf.name} (chat template from the file: the training format)")
    console.print(f"  OpenAI-compatible base URL: {url}", soft_wrap=True)
    console.print(f"  model name: {settings.model_name}", soft_wrap=True)
    if settings.public:
        console.print(
            f"  [yellow]listening on {settings.host}: other machines can reach it at this machine's address, "
            f"port {settings.port}, with no API key[/yellow]",
            soft_wrap=True,
        )
    if settings.stops:
        console.print(
            f"  note: the recipe's stop strings {list(settings.stops)} have no llama-server flag; "
            "send them as the request's \"stop\" (the GGUF's end-of-turn tokens always stop)",
            soft_wrap=True,
        )
    body = '{"messages": [{"role": "user", "content": "Hello"}]}'
    console.print(f"  try: curl {url}/chat/completions -H 'Content-Type: application/json' -d '{body}'", soft_wrap=True)
    console.print(f"  as a teacher: ftw data synth --recipe R --teacher {url} --run NAME", soft_wrap=True)
    console.print(f"  full log: {settings.log}. Ctrl-C stops it.", soft_wrap=True)


COMMANDS = [modelfile, smoke, answers, ollama, chat, lmstudio, serve]
