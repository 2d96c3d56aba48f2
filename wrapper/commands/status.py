"""`ftw status`: where a run stands, read from its manifest: each artifact made, stale (and why),
removed or missing, its size, and the next command to run. Reads only; takes no lock."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from wrapper.commands.options import not_empty
from wrapper.core import artifacts, manifest, stage
from wrapper.core.errors import FtwError
from wrapper.core.eval_result import EVAL_JSON
from wrapper.core.gguf_io import DEFAULT_QUANT, QUANT_TYPES
from wrapper.core.paths import runs_dir
from wrapper.core.ui import console
from wrapper.train.stage import TrainStage, checkpoints


@dataclass
class Artifact:
    key: str
    title: str
    state: str  # made | stale | removed | under way | missing
    path: str | None = None
    bytes: int | None = None
    why: str | None = None  # stale or removed: what happened
    command: str | None = None  # what makes it (again)


@dataclass
class RunStatus:
    run: str
    recipe: str
    profile: str
    artifacts: list[Artifact] = field(default_factory=list)
    next_command: str | None = None


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _made(key: str, title: str, path: Path, command: str) -> Artifact:
    return Artifact(key, title, "made", str(path), size_of(path), command=command)


def adapter_status(run_dir: Path, recorded: dict, run: str) -> Artifact:
    adapter = artifacts.declared(artifacts.ADAPTER)
    command = adapter.command_for(run)
    train = TrainStage(run_dir)
    changes = train.inputs().changes_from(stage.recorded_inputs(run_dir, adapter.key))
    if changes:
        return Artifact(
            adapter.key,
            adapter.title,
            "stale",
            recorded.get(adapter.key),
            why="the run was rendered again with other settings or data: " + stage.describe(changes),
            command=f"{command} --force",
        )
    if adapter.key in recorded and Path(recorded[adapter.key]).exists():
        return _made(adapter.key, adapter.title, Path(recorded[adapter.key]), command)
    found = checkpoints(train.target)
    if found:
        return Artifact(adapter.key, adapter.title, "under way", str(found[-1]), why="resumes from it", command=command)
    return Artifact(adapter.key, adapter.title, "missing", command=command)


REMOVED_WHY = "removed by `ftw gguf` after quantizing, to free disk"


def file_status(
    key: str, recorded: dict, removed: dict, run: str, command: str | None = None, removed_why: str = REMOVED_WHY
) -> Artifact:
    declared = artifacts.declared(key)
    command = command or declared.command_for(run)
    if key in removed:
        return Artifact(key, declared.title, "removed", why=removed_why, command=command)
    value = recorded.get(key)
    if value and Path(value).exists():
        return _made(key, declared.title, Path(value), command)
    return Artifact(key, declared.title, "missing", command=command)


def eval_status(run_dir: Path, recorded: dict, run: str) -> Artifact:
    declared = artifacts.declared(artifacts.EVAL)
    command = declared.command_for(run)
    path = run_dir / EVAL_JSON
    if not path.is_file():
        return Artifact(declared.key, declared.title, "missing", command=command)
    newer = [
        Path(value).name
        for key, value in recorded.items()
        if key.startswith(artifacts.GGUF_PREFIX)  # the quantized files, the adapter pair: what eval scores
        and Path(value).is_file()
        and Path(value).stat().st_mtime > path.stat().st_mtime
    ]
    if newer:
        why = f"older than {', '.join(newer)}"
        return Artifact(declared.key, declared.title, "stale", str(path), path.stat().st_size, why, command)
    return _made(declared.key, declared.title, path, command)


def run_status(run_dir: Path) -> RunStatus:
    data = manifest.load(run_dir)
    plan = manifest.plan_of(run_dir)
    recorded, removed, run = data.get("artifacts", {}), data.get(manifest.REMOVED, {}), plan.run
    status = RunStatus(run, plan.recipe, plan.profile)
    # the merged folder stays (its tokenizer serves later stages); only its weights go
    merged_command = f"ftw export --run {run}" + (" --force" if artifacts.MERGED in removed else "")
    merged_why = "its weights were removed by `ftw gguf` after quantizing"
    rows = [
        adapter_status(run_dir, recorded, run),
        file_status(artifacts.MERGED, recorded, removed, run, merged_command, merged_why),
        file_status(artifacts.gguf("f16"), recorded, removed, run),
    ]
    quants = [q for q in QUANT_TYPES if artifacts.gguf(q) in recorded]
    for quant in quants or [DEFAULT_QUANT]:
        rows.append(file_status(artifacts.gguf(quant), recorded, removed, run, f"ftw gguf --run {run}"))
    rows.append(file_status(artifacts.MODELFILE, recorded, removed, run))
    rows.append(eval_status(run_dir, recorded, run))
    for key in (artifacts.GGUF_LORA, artifacts.PUBLISH):
        if key in recorded:
            rows.append(file_status(key, recorded, removed, run))
    status.artifacts = rows
    status.next_command = next_command(rows)
    return status


def next_command(rows: list[Artifact]) -> str | None:
    """The first thing to do along the path: what is stale, missing or under way (removed intermediates are not
    needed again)."""
    for row in rows:
        if row.state in ("stale", "missing", "under way") and row.command:
            return row.command
    return None


def all_runs() -> list[Path]:
    folder = runs_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / manifest.MANIFEST).is_file())


STATE_STYLE = {"made": "green", "stale": "yellow", "removed": "dim", "under way": "cyan", "missing": "red"}


def print_run(status: RunStatus) -> None:
    table = Table(title=f"{status.run}: {status.recipe} on {status.profile}")
    for column in ("artifact", "state", "size", "path or why"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for row in status.artifacts:
        size = f"{row.bytes / 2**20:,.1f} MiB" if row.bytes is not None else ""
        detail = row.why if row.state in ("stale", "removed", "under way") else (row.path or "")
        style = STATE_STYLE[row.state]
        table.add_row(row.title, f"[{style}]{row.state}[/{style}]", size, escape(detail or ""))
    console.print(table)
    console.print(f"next: {status.next_command}" if status.next_command else "next: nothing left to make")


@click.command()
@click.option("--run", "run", default=None, callback=not_empty, help="One run; without it, every run in one line each.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of tables.")
def status(run: str | None, as_json: bool) -> None:
    """Where a run stands: each artifact made, stale (and why), removed or missing, and the next command.

    \b
    Example:
      ftw status --run demo
      ftw status
    """
    if run:
        found = [run_status(manifest.run_dir_of(run))]
    else:
        found = [run_status(path) for path in all_runs()]
        if not found and not as_json:
            raise FtwError(
                f"no runs under {runs_dir()} yet. Start one: ftw render --recipe demo --profile cpu --run demo"
            )
    if as_json:
        click.echo(json.dumps([asdict(s) for s in found] if not run else asdict(found[0]), indent=2))
        return
    if run:
        print_run(found[0])
        return
    table = Table(title=f"runs in {runs_dir()}")
    for column in ("run", "recipe", "profile", "made", "next"):
        table.add_column(column)
    for each in found:
        made = [a.title for a in each.artifacts if a.state == "made"]
        table.add_row(each.run, each.recipe, each.profile, str(len(made)), each.next_command or "—")
    console.print(table)


COMMANDS = [status]
