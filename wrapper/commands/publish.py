"""`ftw publish`: the run's GGUF(s), Ollama's Hub files and a model card to a Hugging Face repository."""

from __future__ import annotations

import os

import click

from wrapper.commands.options import not_empty, run_option, writes_run
from wrapper.core.gguf_io import QUANT_TYPES
from wrapper.core.manifest import run_dir_of
from wrapper.core.ui import console, done
from wrapper.publish import hub
from wrapper.publish.stage import PublishSettings, Staged, human_size, stage_publish, upload
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
    staged = stage_publish(run_dir, settings, dry_run, remake_modelfile=lambda quant: write_modelfile(run_dir, quant))
    show_folder(staged)
    if dry_run:
        again = f"ftw publish --run {run_dir.name} --repo {settings.repo_id}" + (" --private" if private else "")
        console.print(f"dry run: nothing uploaded. To upload this folder: {again}", soft_wrap=True)
        return
    commit_url = upload(run_dir, settings, staged)
    show_published(settings.repo_id, staged, commit_url)


def show_folder(staged: Staged) -> None:
    files = staged.files
    console.print(f"{staged.folder} ({len(files)} files, {human_size(sum(files.values()))}):", soft_wrap=True)
    for name, size in files.items():
        path = staged.folder / name
        linked = f"  -> {os.readlink(path)}" if path.is_symlink() else ""
        console.print(f"  {human_size(size):>9}  {name}{linked}", soft_wrap=True)


def show_published(repo_id: str, staged: Staged, commit_url: str) -> None:
    default_quant = staged.publish_stage.default_quant
    done(f"uploaded to {hub.repo_url(repo_id)} ({commit_url})")
    console.print("Run it:")
    console.print(f"  ollama run hf.co/{repo_id}:{default_quant}", soft_wrap=True)
    for quant in staged.publish_stage.quants:
        if quant != default_quant:
            console.print(f"  ollama run hf.co/{repo_id}:{quant}", soft_wrap=True)
    console.print(f"  llama-server -hf {repo_id}:{default_quant} --jinja", soft_wrap=True)


COMMANDS = [publish]
