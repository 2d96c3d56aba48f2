"""`ftw render`, `ftw plan`, `ftw train`: from a recipe and a profile to a trained adapter."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from wrapper.commands.options import (
    data_option,
    profile_option,
    recipe_option,
    resolve_profile,
    run_option,
    runs_option,
    set_option,
    writes_run,
)
from wrapper.config.planner import FIT_FRACTION
from wrapper.core import service
from wrapper.core.errors import FtwError
from wrapper.core.manifest import run_dir_of
from wrapper.core.plan import RunPlan
from wrapper.core.ui import console, done
from wrapper.train.board import DEFAULT_PORT, Board, run_board
from wrapper.train.plan_report import max_context_report, plan_report
from wrapper.train.render import render as render_run
from wrapper.train.stage import train as train_run


@click.command()
@recipe_option()
@profile_option()
@run_option
@data_option()
@set_option
@click.option("--ignore-fit", is_flag=True, help="Render even if the planner says it won't fit the profile's GPU.")
@writes_run
def render(
    recipe: str, profile: str, run: str, data_files: tuple[str, ...], overrides: tuple[str, ...], ignore_fit: bool
) -> None:
    """Render and check the LLaMA-Factory configs of a run (train.yaml, export.yaml, dataset_info.json).

    \b
    Example:
      ftw render --recipe demo --profile cpu --run demo --set num_train_epochs=2
    """
    profile = resolve_profile(profile)
    with console.status("rendering and checking with LLaMA-Factory's parser"):
        plan = render_run(recipe, profile, run, list(data_files), list(overrides), ignore_fit)
    print_render_summary(plan, bool(data_files))


def print_render_summary(plan: RunPlan, data_given: bool) -> None:
    rows = sum(d["rows"] for d in plan.datasets)
    console.print(
        f"[green]✓[/green] {plan.run}: {plan.recipe} ({plan.method}) on {plan.profile}, "
        f"{rows} rows in {len(plan.datasets)} file(s), template {plan.template}"
    )
    console.print(f"  {plan.dir}/train.yaml, export.yaml, dataset_info.json, manifest.json")
    if plan.prepared_data:
        data = plan.prepared_data
        console.print(
            f"  data: prepared by `ftw data prepare` in {data['dir']} ({data['prepared_at']}): "
            f"train {data['train']}, "
            + (
                f"probes {data['probes']}, unseen {data['unseen']}"
                if data.get("probes") or data.get("unseen")
                else f"val {data['val']}"
            )
            + " rows; pass --data to use other files"
        )
        for changed in data["changed_sources"]:
            console.print(
                f"  [yellow]note[/yellow]: {escape(changed)} changed since it was prepared; run ftw data prepare again"
            )
    elif data_given and (plan.dir / "data" / "prepared.json").is_file():
        console.print(f"  data: --data given, so the prepared data in {plan.dir / 'data'} is not used this time")
    if plan.fit:
        fit, settings = plan.fit, plan.fit["settings"]
        console.print(
            f"  planner: ~{fit['peak_vram_gb']:.1f} of {fit['budget_gb']:.1f} GiB per GPU "
            f"({'fits' if fit['fits'] else 'DOES NOT FIT, rendered because of --ignore-fit'}); "
            f"{settings['method']}, micro-batch {settings['micro_batch']} x {settings['grad_accum']}, "
            f"checkpointing {checkpointing_words(settings)}"
        )
        for note in fit["notes"]:
            console.print(f"  note: {note}")
    if plan.skipped_checks:
        console.print(f"  checked keys and values only; skipped on this machine: {'; '.join(plan.skipped_checks)}")
    if plan.base_quantization:
        console.print(
            f"  base is a pre-quantized {plan.base_quantization} checkpoint: "
            f"the LoRA will be merged into {plan.merge_base_source}"
        )


@click.command()
@recipe_option()
@profile_option(required=False)
@data_option(help="Plan for these data files instead of the recipe's.")
@set_option
@click.option(
    "--max-context",
    is_flag=True,
    help="The longest cutoff_len that fits at micro-batch 1, with checkpoints in GPU memory and offloaded "
    "to host RAM, for every GPU profile (or the --profile given).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def plan(
    recipe: str,
    profile: str | None,
    data_files: tuple[str, ...],
    overrides: tuple[str, ...],
    max_context: bool,
    as_json: bool,
) -> None:
    """Before training: memory per GPU, fit and margin, tokens per step, epoch time, output sizes.

    \b
    Example:
      ftw plan --recipe qwen3-8b --profile rtx4070 --data data/demo_lore.json
      ftw plan --recipe llama31-8b --max-context
    """
    if max_context:
        longest = max_context_report(recipe, resolve_profile(profile) if profile else None, list(overrides))
        if as_json:
            print(json.dumps(longest, ensure_ascii=False, indent=2))
        else:
            print_max_context(longest)
        return
    if not profile:
        raise FtwError(f"--profile is needed to plan a run: ftw plan --recipe {recipe} --profile rtx4070")
    report = plan_report(recipe, resolve_profile(profile), list(data_files), list(overrides))
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print_plan(report)
    if not report["fits"]:
        raise FtwError(
            f"the plan does not fit {report['profile']}: ~{report['peak_vram_gb']:.2f} of "
            f"{report['budget_gb']:.2f} GiB. The longest cutoff_len per card: "
            f"ftw plan --recipe {recipe} --max-context"
        )


def print_max_context(report: dict) -> None:
    table = Table(title=f"longest cutoff_len at micro-batch 1: {report['recipe']} ({report['base_model']})")
    for column in ("profile", "method", "checkpoints on GPU", "offloaded", "host RAM"):
        table.add_column(column, justify="left" if column in ("profile", "method") else "right")
    for row in report["profiles"]:
        table.add_row(
            f"{row['profile']} {row['memory_gb']:g} GiB",
            row["method"],
            _tokens(row["without_offload"], report["model_context"]),
            _tokens(row["with_offload"], report["model_context"]),
            f"{row['host_ram_gb_with_offload']:.1f} GiB" if row["with_offload"] else "",
        )
    console.print(table)
    console.print(
        f"fits within {FIT_FRACTION:.0%} of each card at micro-batch 1 with gradient checkpointing; "
        f"'model max' is the model's own context ({report['model_context']:,} tokens)"
    )


def _tokens(cutoff: int, model_context: int) -> str:
    if cutoff == 0:
        return "doesn't fit"
    return "model max" if cutoff >= model_context else f"{cutoff:,}"


def checkpointing_words(settings: dict) -> str:
    if not settings["checkpointing"]:
        return "off"
    return "on, offloaded to host RAM" if settings.get("offload_checkpoints") else "on"


def print_plan(report: dict) -> None:
    verdict = "[green]fits[/green]" if report["fits"] else "[red]does not fit[/red]"
    console.print(
        f"[bold]{report['recipe']}[/bold] on [bold]{report['profile']}[/bold]: {verdict} — "
        f"{report['base_model']} ({report['params_b']} B params), {report['method']}"
    )
    if report.get("memory_gb"):
        table = Table(title="estimated peak GPU memory per GPU (GiB)")
        table.add_column("part")
        table.add_column("GiB", justify="right")
        for part, value in report["memory_gb"].items():
            table.add_row(part, f"{value:.2f}")
        table.add_row("[bold]total[/bold]", f"[bold]{report['peak_vram_gb']:.2f}[/bold]")
        table.add_row("budget (92%)", f"{report['budget_gb']:.2f}")
        table.add_row("margin", f"{report['margin_gb']:.2f}")
        if report.get("host_ram_gb"):
            table.add_row("host RAM (offloaded checkpoints)", f"{report['host_ram_gb']:.2f}")
        console.print(table)
        s = report["settings"]
        console.print(
            f"settings: micro-batch {s['micro_batch']} x accumulation {s['grad_accum']} x {s['gpus']} GPU(s), "
            f"cutoff {s['cutoff']}, gradient checkpointing {checkpointing_words(s)}"
            + (f", DeepSpeed {report['deepspeed']}" if report.get("deepspeed") else "")
        )
        console.print(
            f"tokens per optimizer step: {report['tokens_per_step']:,}; throughput ~{report['tokens_per_s']:,.0f} "
            f"tokens/s ({report['throughput_source']})"
        )
        console.print(
            f"epoch: {report['dataset_tokens']:,} tokens in {report['dataset_rows']:,} rows "
            f"({report['dataset_tokens_counted_by']}) -> ~{report['epoch_hours'] * 60:.1f} min per epoch, "
            f"{report['epochs']:g} epochs"
        )
    if report.get("facts"):
        facts = report["facts"]
        console.print(
            f"facts: {facts['facts']}, {facts['phrasings_min']} to median {facts['phrasings_median']:g} phrasings "
            f"each in training x {report['epochs']:g} epochs = {facts['exposures_min']:g} to "
            f"{facts['exposures_median']:g} exposures per fact"
        )
    for note in report.get("notes", []):
        console.print(f"note: {note}")
    console.print(f"merged bf16 model ~{report['merged_gb']:.1f} GiB, Q4_K_M GGUF ~{report['gguf_q4_k_m_gb']:.1f} GiB")


@click.command()
@run_option
@click.option("--force", is_flag=True, help="Train again from the start, dropping the adapter and its checkpoints.")
@click.option("--ignore-fit", is_flag=True, help="Start even if the GPU has less free memory than the plan needs.")
@writes_run
def train(run: str, force: bool, ignore_fit: bool) -> None:
    """Train with llamafactory-cli; re-running resumes from the last checkpoint (same settings and data only).

    \b
    Example:
      ftw train --run demo
    """
    train_run(run_dir_of(run), force=force, ignore_fit=ignore_fit)


@click.command()
@runs_option("Run name; give --run several times to compare runs side by side.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--host",
    default=service.LOOPBACK,
    show_default=True,
    help="Where TensorBoard listens; 0.0.0.0 makes it reachable from other machines.",
)
def board(runs: tuple[str, ...], port: int, host: str) -> None:
    """TensorBoard on the runs' training curves (loss, learning rate, eval loss), until Ctrl-C.

    Training writes them by default (report_to: tensorboard), into runs/RUN/adapter/runs/;
    TensorBoard reads them while training goes on. Nothing leaves the machine.

    \b
    Example:
      ftw board --run demo
      ftw board --run demo --run legal --port 6007
    """
    run_board(runs, show_board, host, port)


def show_board(board: Board) -> None:
    done(f"TensorBoard is showing {', '.join(board.runs)}: {board.address.root}/")
    if board.address.public:
        console.print(f"  [yellow]listening on {board.host}: other machines can reach it[/yellow]", soft_wrap=True)
    console.print(f"  full log: {board.log}. Ctrl-C stops it.", soft_wrap=True)


COMMANDS = [render, plan, train, board]
