"""`ftw export`, `ftw gguf`, `ftw adapter`: from the adapter to the merged model and the GGUF files, or to
the LoRA alone as a GGUF adapter."""

from __future__ import annotations

from pathlib import Path

import click

from wrapper.commands.options import force_option, not_empty, quant_option, require_paths, run_option, writes_run
from wrapper.core import artifacts, manifest
from wrapper.core.errors import FtwError
from wrapper.core.manifest import run_dir_of
from wrapper.core.ui import console
from wrapper.export.stage import export as export_run
from wrapper.gguf import adapter as adapter_gguf
from wrapper.gguf.imatrix import DEFAULT_TOKENS, MIN_CONTEXT
from wrapper.gguf.stage import OUTTYPES, make_ggufs
from wrapper.serve.modelfile import ollama_model_name, write_adapter_modelfile


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
@writes_run
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
    "format (llama.cpp's llama-imatrix and llama-quantize, built on first use: ftw tools).",
)
@click.option(
    "--imatrix-tokens",
    type=click.IntRange(min=2 * MIN_CONTEXT),
    default=DEFAULT_TOKENS,
    show_default=True,
    help="The most calibration tokens: a seeded sample of whole training rows up to this many.",
)
@click.option("--adapter", is_flag=True, help="The same as `ftw adapter` (kept for a while): see ftw adapter --help.")
@click.option("--base", "base", metavar="FILE.gguf|OLLAMA_NAME", default=None, help="With --adapter: see ftw adapter.")
@click.option(
    "--adapter-outtype",
    default="f16",
    show_default=True,
    type=click.Choice(adapter_gguf.OUTTYPES),
    help="With --adapter: see ftw adapter's --outtype.",
)
@force_option
@writes_run
def gguf(
    run: str,
    quants: tuple[str, ...],
    outtype: str,
    keep_intermediates: bool,
    imatrix: bool,
    imatrix_tokens: int,
    adapter: bool,
    base: str | None,
    adapter_outtype: str,
    force: bool,
) -> None:
    """Convert the merged model to GGUF with llama.cpp and quantize it (`ftw adapter` makes the LoRA
    alone as a GGUF adapter instead; `--adapter` here does the same).

    \b
    Example:
      ftw gguf --run demo --quant Q4_K_M --quant Q8_0 --keep-intermediates
      ftw gguf --run demo --imatrix
    """
    if adapter:
        gguf_adapter(run_dir_of(run), base, quants[0], adapter_outtype, force)
        return
    if base is not None:
        raise FtwError(
            f"--base names the base an adapter is served on, for ftw adapter (ftw adapter --run {run} --base {base})"
        )
    make_ggufs(
        run_dir_of(run),
        list(quants),
        outtype=outtype,
        force=force,
        keep_intermediates=keep_intermediates,
        imatrix_tokens=imatrix_tokens if imatrix else None,
    )


@click.command()
@run_option
@click.option(
    "--base",
    "base",
    metavar="FILE.gguf|OLLAMA_NAME",
    default=None,
    callback=not_empty,
    help="The base it is served on, a GGUF file or an Ollama name (qwen3:8b), checked against the run's "
    "base. Default: ftw makes gguf/RUN-base-QUANT.gguf from the run's base.",
)
@quant_option(help="The quantization of the base GGUF ftw makes when no --base is given.")
@click.option(
    "--outtype",
    default="f16",
    show_default=True,
    type=click.Choice(adapter_gguf.OUTTYPES),
    help="The adapter's precision (q8_0 halves it again).",
)
@force_option
@writes_run
def adapter(run: str, base: str | None, quant: str, outtype: str, force: bool) -> None:
    """The LoRA alone as a GGUF adapter (megabytes, gguf/RUN-lora.gguf) and Modelfile.adapter, which applies
    it to its base model (FROM) at load time, instead of a merged GGUF of the whole model.

    \b
    Example:
      ftw adapter --run demo
      ftw adapter --run demo --base qwen3:8b
    """
    if base is not None and adapter_gguf.looks_like_path(base):
        require_paths("--base", (str(Path(base).expanduser()),))
    gguf_adapter(run_dir_of(run), base, quant.upper(), outtype, force)


def gguf_adapter(run_dir: Path, base: str | None, quant: str, outtype: str, force: bool) -> None:
    """The adapter GGUF (and the base it is served on), then Modelfile.adapter, then what to run."""
    made = adapter_gguf.make_adapter(run_dir, base, quant, outtype, force)
    modelfile = write_adapter_modelfile(
        run_dir, made.lora, made.base.modelfile_from, made.base.gguf, made.header_gguf, force
    )
    merged = manifest.load(run_dir)["artifacts"].get(artifacts.gguf(quant))
    sizes = f"{made.lora.name} {adapter_gguf.size_text(made.lora)}"
    if merged and Path(merged).is_file():
        sizes += f", where the merged {quant} is {adapter_gguf.size_text(Path(merged))}"
    if made.base.gguf is not None:
        sizes += f"; it runs on {made.base.gguf.name} ({adapter_gguf.size_text(made.base.gguf)})"
    console.print(f"Adapter: {sizes}.", soft_wrap=True)
    if not made.base.checked:
        console.print(f"  [yellow]base not checked here[/yellow]: {made.base.label} (see above)", soft_wrap=True)
    name = ollama_model_name(run_dir.name) + "-lora"
    console.print(f"  Ollama:    cd {run_dir} && ollama create {name} -f {modelfile.name}", soft_wrap=True)
    if made.base.gguf is not None:
        console.print(f"  llama.cpp: llama-cli -m {made.base.gguf} --lora {made.lora}", soft_wrap=True)


COMMANDS = [export, gguf, adapter]
