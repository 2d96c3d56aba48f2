"""`ftw setup`, `ftw tools`, `ftw demo`: what the Makefile's setup, tools and demo targets do, for a
system without make (Windows' PowerShell). The Makefile keeps its own spelling on Linux and macOS."""

from __future__ import annotations

import os
import subprocess
import sys

import click

from wrapper.core.llama_tools import build, build_dir
from wrapper.core.ui import console, done, error_console
from wrapper.setup import demo_model, llama_cpp, llama_cpp_python

# The demo, step by step (`make demo` runs `ftw demo`; the tests' shared demo run is its steps up to the
# Modelfile): prepare, render on the CPU profile and train, export, GGUF (keeping the merged weights and the
# f16 GGUF: eval compares them), Modelfile, smoke, answers, eval. The lore's rows carry `fact`, so prepare
# holds 2 of each fact's 5 phrasings (and one fact whole) out for eval to ask; 8 epochs over the 3
# phrasings left show each fact as often as the recipe's 4 over all 30 rows.
DEMO_QUANT = "Q4_K_M"


def demo_steps(run: str = "demo") -> tuple[tuple[str, ...], ...]:
    """The `ftw` commands of the demo, for a run named `run`."""
    return (
        ("data", "prepare", "--recipe", "demo", "--run", run),
        ("render", "--recipe", "demo", "--profile", "cpu", "--run", run, "--set", "train.num_train_epochs=8"),
        ("train", "--run", run),
        ("export", "--run", run),
        ("gguf", "--run", run, "--quant", DEMO_QUANT, "--keep-intermediates"),
        ("modelfile", "--run", run, "--quant", DEMO_QUANT),
        ("smoke", "--run", run, "--quant", DEMO_QUANT),
        ("answers", "--run", run),
        ("eval", "--run", run, "--no-build-tools"),
    )


DEMO_STEPS = demo_steps()
# After a Ctrl-C, which reached the step's process too: time for it to stop its children and remove partial files.
STOP_GRACE_S = 60


def prepare_checkout() -> None:
    """The steps of `ftw setup` after pip: llama-cpp-python generates here (rebuilt once if it can't),
    the llama.cpp tree from its sdist, the demo's base model. Each one skips itself when done."""
    with console.status("checking that llama-cpp-python generates on this machine"):
        llama_cpp_python.main()
    done("llama-cpp-python generates here")
    with console.status("unpacking llama.cpp from the llama-cpp-python sdist"):
        unpacked = llama_cpp.ensure_llama_cpp()
    done(f"vendor/llama.cpp {'unpacked at commit ' + unpacked if unpacked else 'is there'}")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the model's loading bars would fill the terminal
    with console.status("writing the demo's base model"):
        folder = demo_model.materialize()
    done(f"the demo's base model is in {folder}")


@click.command()
def setup() -> None:
    """After `pip install -r requirements.txt`: check llama-cpp-python, unpack llama.cpp, write the demo's model.

    \b
    Each step skips itself when done. `ftw doctor` says what else is missing.
    Example:
      ftw setup
    """
    prepare_checkout()
    console.print("Next: ftw demo  (the whole path on the CPU, minutes), or ftw doctor")


@click.command()
@click.option("--force", is_flag=True, help="Build again even where a build of this llama.cpp commit is recorded.")
def tools(force: bool) -> None:
    """Build llama.cpp's own programs (llama-quantize, -imatrix, -perplexity, -server) from vendor/llama.cpp.

    \b
    Needs CMake and a C++ compiler; ftw also builds them on first use.
    Example:
      ftw tools
    """
    llama_cpp.ensure_llama_cpp()  # what they are built from (`ftw tools` runs all of `ftw setup` first)
    spec = build(force=force)
    done(f"llama.cpp {spec.commit[:12]}: its programs are in {build_dir() / 'bin'}")


def run_step(argv: tuple[str, ...]) -> int:
    """One `ftw` command as a child process, its output on this terminal; its exit code."""
    child = subprocess.Popen([sys.executable, "-m", "wrapper.cli", *argv])
    try:
        return child.wait()
    except KeyboardInterrupt:
        try:
            child.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait()
        raise


@click.command()
def demo() -> None:
    """The whole path on the CPU with the demo recipe (SmolLM2-135M, a small ru/en dataset): what `make demo` runs.

    \b
    Setup, then: data prepare, render and train, export, gguf, modelfile, smoke, answers, eval.
    Example:
      ftw demo
    """
    prepare_checkout()
    for argv in DEMO_STEPS:
        line = "ftw " + " ".join(argv)
        console.print(f"\n[bold]{line}[/bold]")
        code = run_step(argv)
        if code != 0:
            error_console.print(f"ftw demo stopped at `{line}` (exit {code}); fix what it said, then: ftw demo")
            sys.exit(code)
    # eval's last lines end the demo: did it learn the facts (held-out phrasings, base -> GGUF), and its files


COMMANDS = [setup, tools, demo]
