"""Options several commands share, defined once so that they read and behave the same everywhere."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from wrapper.config.gpu import detect_profile
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import DEFAULT_QUANT, QUANT_TYPES
from wrapper.core.runlock import run_lock
from wrapper.core.ui import console


def not_empty(ctx: click.Context, param: click.Parameter, value):
    """An empty value (`--run ""`, an unset shell variable) is refused by name, before anything reads it."""
    values = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, str) and not v.strip() for v in values):
        raise click.BadParameter("must not be empty", ctx=ctx, param=param)
    return value


def require_paths(option: str, paths: tuple[str, ...]) -> None:
    """Files or folders the user names must be there: said with the option, before anything long starts.
    (Not a parse-time callback: the documented commands are parsed by tests where their files don't exist.)"""
    for path in paths:
        if not Path(path).exists():
            raise FtwError(f"{option} {path}: no such file or folder")


run_option = click.option(
    "--run", "run", required=True, callback=not_empty, help="Run name: the folder runs/RUN holds everything."
)


def runs_option(help: str):
    """--run repeated: several runs side by side."""
    return click.option("--run", "runs", required=True, multiple=True, callback=not_empty, help=help)


force_option = click.option("--force", is_flag=True, help="Make it again even if it is up to date.")


def recipe_option(
    required: bool = True,
    default: str | None = None,
    help: str = "Recipe name in recipes/ or a path to a recipe .yaml.",
):
    # An explicit default=None counts as a default in click 8.3+, which then lets a required option go missing.
    defaults = {"default": default, "show_default": True} if default is not None else {}
    return click.option("--recipe", required=required, callback=not_empty, help=help, **defaults)


def profile_option(
    required: bool = True,
    help: str = "Profile name or alias in recipes/profiles/, NAMExN for N GPUs (cpuxN: N processes on the CPU), "
    "a path to a .yaml, or 'auto' (detects the GPU).",
):
    return click.option("--profile", required=required, callback=not_empty, help=help)


def data_option(help: str = "Your data file(s); replace the recipe's dataset. Repeat for several."):
    return click.option("--data", "data_files", multiple=True, metavar="FILE", callback=not_empty, help=help)


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value: a LLaMA-Factory training key (--set learning_rate=5e-5) or a "
    "recipe key (--set system='...', --set data.val_ratio=0.05). Repeat for several.",
)


def quant_option(multiple: bool = False, help: str = "Which quantized GGUF to use."):
    """--quant: one llama.cpp quantization type, or several (repeat the option) where files are made."""
    return click.option(
        "--quant",
        "quants" if multiple else "quant",
        multiple=multiple,
        default=(DEFAULT_QUANT,) if multiple else DEFAULT_QUANT,
        show_default=True,
        type=click.Choice(QUANT_TYPES, case_sensitive=False),
        help=help,
    )


def writes_run(command):
    """For a command that writes into runs/RUN: it holds the run's lock (wrapper/core/runlock.py) while it
    runs, so that a second writer is refused with the first one's pid and command. Put it under the options."""

    @functools.wraps(command)
    def locked(*args, **kwargs):
        with run_lock(kwargs["run"]):
            return command(*args, **kwargs)

    return locked


def resolve_profile(profile: str) -> str:
    """--profile auto: the profile of this machine's GPUs, and the line saying which it chose."""
    if profile != "auto":
        return profile
    name, chosen = detect_profile()
    console.print(chosen)
    return name
