"""Options several commands share, defined once so that they read and behave the same everywhere."""

from __future__ import annotations

import click

from wrapper.core.gguf_io import QUANT_TYPES

run_option = click.option("--run", "run", required=True, help="Run name: the folder runs/RUN holds everything.")


def runs_option(help: str):
    """--run repeated: several runs side by side."""
    return click.option("--run", "runs", required=True, multiple=True, help=help)


force_option = click.option("--force", is_flag=True, help="Make it again even if it is up to date.")


def recipe_option(
    required: bool = True,
    default: str | None = None,
    help: str = "Recipe name in recipes/ or a path to a recipe .yaml.",
):
    return click.option("--recipe", required=required, default=default, show_default=default is not None, help=help)


def profile_option(
    required: bool = True,
    help: str = "Profile name or alias in recipes/profiles/, NAMExN for N GPUs (cpuxN: N processes on the CPU), "
    "a path to a .yaml, or 'auto' (detects the GPU).",
):
    return click.option("--profile", required=required, default=None, help=help)


def data_option(help: str = "Your data file(s); replace the recipe's dataset. Repeat for several."):
    return click.option("--data", "data_files", multiple=True, metavar="FILE", help=help)


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
        default=("Q4_K_M",) if multiple else "Q4_K_M",
        show_default=True,
        type=click.Choice(QUANT_TYPES, case_sensitive=False),
        help=help,
    )
