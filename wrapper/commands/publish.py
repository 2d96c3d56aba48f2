"""`ftw publish`: the run's GGUF(s), Ollama's Hub files and a model card to a Hugging Face repository."""

from __future__ import annotations

import click

from wrapper.commands.options import not_empty, run_option, writes_run
from wrapper.core.gguf_io import QUANT_TYPES
from wrapper.core.manifest import run_dir_of
from wrapper.publish.stage import PublishSettings
from wrapper.publish.stage import publish as publish_run
from wrapper.serve.modelfile import write_modelfile


@click.command()
@run_option
@click.option(
    "--repo", "repo_id", required=True, callback=not_empty, metavar="USER/NAME", help="The model repository on the Hub."
)
@click.option(
    "--quant",
    "quants",
    multiple=True,
    type=click.Choice(QUANT_TYPES, case_sensitive=False),
    help="Which quantized GGUF(s) to upload; repeat for several (default: every one the run has).",
)
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="Build runs/RUN/publish and list it; upload nothing (needs no token).")
@click.option(
    "--include-data",
    is_flag=True,
    help="Also upload the training data files (under data/). By default no row of them leaves this machine.",
)
@click.option(
    "--base-model",
    metavar="ORG/NAME",
    default=None,
    help="The base model's Hub id, for the card's base_model, where the run trained from a local folder.",
)
@click.option(
    "--license",
    "license_id",
    metavar="ID",
    default=None,
    help="The license identifier (apache-2.0, llama3.1, ...), where the base model's card can't be read.",
)
@writes_run
def publish(
    run: str,
    repo_id: str,
    quants: tuple[str, ...],
    private: bool,
    dry_run: bool,
    include_data: bool,
    base_model: str | None,
    license_id: str | None,
) -> None:
    """Upload the run's quantized GGUF(s) to a Hugging Face model repository, ready for `ollama run hf.co/...`.

    Beside the GGUF(s): Ollama's `template`, `system` and `params` files taken from the run's
    checked Modelfile (so Ollama sends the training format), the Modelfile itself and a model
    card. The token is huggingface_hub's (`hf auth login`, or HF_TOKEN); it is never written.

    \b
    Example:
      ftw publish --run demo --repo alice/demo-lore --dry-run
      ftw publish --run demo --repo alice/demo-lore --base-model HuggingFaceTB/SmolLM2-135M-Instruct
    """
    settings = PublishSettings(
        repo_id=repo_id,
        quants=tuple(quant.upper() for quant in quants),
        private=private,
        include_data=include_data,
        base_model=base_model,
        license=license_id,
    )
    run_dir = run_dir_of(run)
    publish_run(run_dir, settings, dry_run=dry_run, remake_modelfile=lambda quant: write_modelfile(run_dir, quant))


COMMANDS = [publish]
