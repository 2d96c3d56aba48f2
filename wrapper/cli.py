"""`ftw`: one command per pipeline stage, each reading and writing runs/RUN/."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wrapper.errors import FtwError
from wrapper.paths import runs_dir
from wrapper.ui import console, quiet_libraries

run_option = click.option("--run", "run", required=True, help="Run name: the folder runs/RUN holds everything.")
force_option = click.option("--force", is_flag=True, help="Redo the stage even if its output exists.")


def run_path(run: str) -> Path:
    path = runs_dir() / run
    if not (path / "manifest.json").is_file():
        raise FtwError(f"no run '{run}' under {runs_dir()}. Render it first: "
                       f"ftw render --recipe R --profile P --run {run}")
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Fine-tune with LLaMA-Factory, convert with llama.cpp, serve with Ollama / LM Studio."""


@cli.command()
@click.option("--recipe", required=True, help="Recipe name in recipes/ or a path to a recipe .yaml.")
@click.option("--profile", required=True, help="Profile name in recipes/profiles/ or a path to a .yaml.")
@run_option
@click.option("--data", "data_files", multiple=True, help="Your Alpaca/ShareGPT JSON(L) file(s); replace the recipe's dataset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set learning_rate=5e-5 or --set system='...'.")
def render(recipe: str, profile: str, run: str, data_files: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Render and check the LLaMA-Factory configs for a run."""
    from wrapper.render import render as render_run

    with console.status("rendering and checking with LLaMA-Factory's parser"):
        plan = render_run(recipe, profile, run, list(data_files), list(overrides))
    rows = sum(d["rows"] for d in plan.datasets)
    console.print(f"[green]✓[/green] {plan.run}: {plan.recipe} ({plan.method}) on {plan.profile}, "
                  f"{rows} rows in {len(plan.datasets)} file(s), template {plan.template}")
    console.print(f"  {plan.dir}/train.yaml, export.yaml, dataset_info.json, manifest.json")
    if plan.base_quantization:
        console.print(f"  base is a pre-quantized {plan.base_quantization} checkpoint: "
                      f"the LoRA will be merged into {plan.merge_base_source}")


@cli.command()
@run_option
@force_option
def train(run: str, force: bool) -> None:
    """Train with llamafactory-cli; re-running resumes from the last checkpoint."""
    from wrapper.train import train as train_run

    train_run(run_path(run), force=force)


@cli.command()
@run_option
@force_option
def export(run: str, force: bool) -> None:
    """Merge the LoRA into the full-precision base with llamafactory-cli export."""
    from wrapper.export import export as export_run

    export_run(run_path(run), force=force)


@cli.command()
@run_option
@click.option("--quant", "quants", multiple=True, default=("Q4_K_M",), show_default=True,
              help="llama.cpp quantization type(s); repeat for several.")
@click.option("--outtype", default="f16", show_default=True, type=click.Choice(["f16", "bf16"]),
              help="Precision of the unquantized GGUF the quantizer starts from.")
@force_option
def gguf(run: str, quants: tuple[str, ...], outtype: str, force: bool) -> None:
    """Convert the merged model to GGUF with llama.cpp and quantize it."""
    from wrapper.gguf_stage import make_ggufs

    make_ggufs(run_path(run), list(quants), outtype=outtype, force=force)


@cli.command()
@run_option
@click.option("--quant", default="Q4_K_M", show_default=True, help="Which quantized GGUF the Modelfile uses.")
def modelfile(run: str, quant: str) -> None:
    """Write an Ollama Modelfile for the run's quantized GGUF."""
    from wrapper.modelfile import write_modelfile

    write_modelfile(run_path(run), quant.upper())


@cli.command()
@run_option
@click.option("--quant", default="Q4_K_M", show_default=True)
def smoke(run: str, quant: str) -> None:
    """Ask the recipe's check prompts to the quantized GGUF in llama.cpp."""
    from wrapper.smoke import smoke as smoke_run

    smoke_run(run_path(run), quant.upper())


@cli.command()
@run_option
@click.option("--quant", default="Q4_K_M", show_default=True)
def answers(run: str, quant: str) -> None:
    """Table of the check prompts: base model beside the fine-tuned quantized GGUF."""
    from wrapper.smoke import compare_with_base

    compare_with_base(run_path(run), quant.upper())


@cli.command()
@run_option
def ollama(run: str) -> None:
    """Run `ollama create` from the run's Modelfile, or print the command where Ollama is absent."""
    from wrapper.modelfile import ollama_create

    ollama_create(run_path(run))


def main() -> None:
    quiet_libraries()
    try:
        cli.main(standalone_mode=False)
    except FtwError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("[yellow]interrupted[/yellow]: re-run the same command to continue (training resumes from its last checkpoint).")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: re-run the same command to continue (training resumes from its last checkpoint).")
        sys.exit(130)


if __name__ == "__main__":
    main()
