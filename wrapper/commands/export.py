"""`ftw export`, `ftw gguf`: from the adapter to the merged model and the GGUF files."""

from __future__ import annotations

import click

from wrapper.commands.options import force_option, quant_option, run_option
from wrapper.core.manifest import run_dir_of
from wrapper.export.stage import export as export_run
from wrapper.gguf.imatrix import DEFAULT_TOKENS, MIN_CONTEXT
from wrapper.gguf.stage import OUTTYPES, make_ggufs


@click.command()
@run_option
@click.option(
    "--weights-dtype",
    type=click.Choice(["f16", "base"]),
    default="f16",
    show_default=True,
    help="f16: the merged bf16 values stored as the f16 GGUF holds them, so llama.cpp's converter "
    "needs no float32 copy (an 8B export in about 2 GB of RAM); base: stored in the base's dtype, "
    "for using merged/ elsewhere or for ftw gguf --outtype bf16.",
)
@force_option
def export(run: str, weights_dtype: str, force: bool) -> None:
    """Merge the LoRA into the full-precision base (streaming, no GPU; else llamafactory-cli export).

    \b
    Example:
      ftw export --run demo
    """
    export_run(run_dir_of(run), force=force, weights_dtype=weights_dtype)


@click.command()
@run_option
@quant_option(multiple=True, help="llama.cpp quantization type(s); repeat for several.")
@click.option(
    "--outtype",
    default="f16",
    show_default=True,
    type=click.Choice(OUTTYPES),
    help="Precision of the unquantized GGUF the quantizer starts from.",
)
@click.option(
    "--keep-intermediates",
    is_flag=True,
    help="Keep the merged weights and the f16/bf16 GGUF (ftw eval needs them); "
    "by default they are removed once the quantized files are verified.",
)
@click.option(
    "--imatrix",
    is_flag=True,
    help="Quantize with an importance matrix computed on the run's own training rows in the training "
    "format (llama.cpp's llama-imatrix and llama-quantize, built on first use: make tools).",
)
@click.option(
    "--imatrix-tokens",
    type=click.IntRange(min=2 * MIN_CONTEXT),
    default=DEFAULT_TOKENS,
    show_default=True,
    help="The most calibration tokens: a seeded sample of whole training rows up to this many.",
)
@force_option
def gguf(
    run: str,
    quants: tuple[str, ...],
    outtype: str,
    keep_intermediates: bool,
    imatrix: bool,
    imatrix_tokens: int,
    force: bool,
) -> None:
    """Convert the merged model to GGUF with llama.cpp and quantize it.

    \b
    Example:
      ftw gguf --run demo --quant Q4_K_M --quant Q8_0 --keep-intermediates
      ftw gguf --run demo --imatrix
    """
    make_ggufs(
        run_dir_of(run),
        list(quants),
        outtype=outtype,
        force=force,
        keep_intermediates=keep_intermediates,
        imatrix_tokens=imatrix_tokens if imatrix else None,
    )


COMMANDS = [export, gguf]
