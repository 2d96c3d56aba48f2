"""`ftw data check`, `ftw data prepare`: the user's files, checked, then one clean training set."""

from __future__ import annotations

from pathlib import Path

import click

from wrapper.commands.options import (
    data_option,
    not_empty,
    recipe_option,
    require_paths,
    resolve_profile,
    run_option,
    set_option,
    writes_run,
)
from wrapper.config.profiles import load_profile
from wrapper.config.schema import SYNTH_KINDS
from wrapper.core.paths import check_run_name, runs_dir
from wrapper.core.ui import console, done
from wrapper.data.check import check
from wrapper.data.prepare import prepare, previous_plan, run_overrides
from wrapper.synth.job import synthesize_run
from wrapper.synth.teachers import TEACHER_FORMS
from wrapper.train.render import render


@click.group()
def data() -> None:
    """Your data files: check them, then prepare a clean, split training set for a run."""


@data.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@recipe_option(
    required=False, default="demo", help="Recipe whose tokenizer, template, cutoff_len and data: section apply."
)
@click.option("--max-problems", default=0, show_default=True, help="Show at most N invalid rows per file (0: all).")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every problem and duplicate, and each file's summary, to this JSONL file.",
)
def data_check(files: tuple[str, ...], recipe: str, max_problems: int, report_path: Path | None) -> None:
    """Report rows, problems (file:line), duplicates, token lengths and languages; exit 1 if any row is invalid.

    FILES: JSON/JSONL (Alpaca, ShareGPT, OpenAI messages, {"text"}, chat logs with data.field_map),
    .txt/.md, .srt/.vtt, or folders of them.

    \b
    Example:
      ftw data check data/samples/alpaca.jsonl data/samples/sharegpt.jsonl
    """
    check(list(files), recipe, max_problems, report_path)


@data.command("prepare")
@recipe_option()
@data_option(help="File(s) or folder(s) to use instead of the recipe's dataset.")
@run_option
@click.option(
    "--profile",
    callback=not_empty,
    help="Render the run with this profile afterwards (default: the one it was rendered with, "
    "if any; 'auto' detects the GPU).",
)
@set_option
@writes_run
def data_prepare(
    recipe: str, data_files: tuple[str, ...], run: str, profile: str | None, overrides: tuple[str, ...]
) -> None:
    """Merge, normalise, dedupe and split into runs/RUN/data (train, val, rejects); train uses it.

    \b
    Example:
      ftw data prepare --recipe demo --data data/samples/alpaca.jsonl --data data/samples/openai.jsonl --run mine
    """
    check_run_name(run)
    chosen = resolve_profile(profile) if profile else None
    if chosen:
        load_profile(chosen)  # a wrong profile is said before the data is prepared, not after
    previous = previous_plan(runs_dir() / run)
    prepare(recipe, list(data_files), run, list(overrides))
    rerender(recipe, run, previous, chosen, run_overrides(previous, list(overrides)))


@data.command("synth")
@recipe_option(help="Recipe whose tokenizer cuts the chunks and whose synth: section applies.")
@click.option(
    "--docs",
    "docs",
    multiple=True,
    metavar="PATH",
    callback=not_empty,
    help="Documents or folders (.pdf .docx .txt .md .html .srt .vtt); replace the recipe's synth.docs. Repeat.",
)
@click.option("--teacher", required=True, callback=not_empty, help=TEACHER_FORMS[0].upper() + TEACHER_FORMS[1:] + ".")
@click.option("--teacher-model", default=None, help="The model an endpoint serves (qwen3:8b for Ollama).")
@run_option
@click.option("--kind", type=click.Choice(SYNTH_KINDS), default=None, help="qa or cot (default: the recipe's).")
@click.option("--per-chunk", type=click.IntRange(1, 20), default=None, help="Rows asked per chunk.")
@click.option(
    "--parallel", type=click.IntRange(1, 64), default=1, show_default=True, help="Requests at once (endpoints)."
)
@click.option("--limit", type=click.IntRange(1), default=None, help="Ask for the first N chunks only (a trial).")
@click.option("--judge/--no-judge", default=None, help="The teacher also scores each row 1-5 (synth.min_score).")
@click.option("--force", is_flag=True, help="Start over: drop the rows made so far (needed after a change).")
@set_option
@writes_run
def data_synth(
    recipe: str,
    docs: tuple[str, ...],
    teacher: str,
    teacher_model: str | None,
    run: str,
    kind: str | None,
    per_chunk: int | None,
    parallel: int,
    limit: int | None,
    judge: bool | None,
    force: bool,
    overrides: tuple[str, ...],
) -> None:
    """Documents -> grounded question-answer rows from a teacher model, in runs/RUN/synth.

    Re-running continues where it stopped; changed settings are refused unless --force.

    \b
    Example:
      ftw data synth --recipe demo-docs --teacher http://127.0.0.1:11434/v1 --teacher-model qwen3:8b --run docs
    """
    check_run_name(run)
    require_paths("--docs", docs)  # before the teacher is asked anything
    settings = {"kind": kind, "per_chunk": per_chunk, "judge": judge}
    extra = [f"synth.{key}={value}" for key, value in settings.items() if value is not None]
    synthesize_run(recipe, list(docs), teacher, teacher_model, run, parallel, limit, force, list(overrides) + extra)


def rerender(recipe: str, run: str, previous: dict, profile: str | None, overrides: list[str]) -> None:
    """Render the run again so train.yaml names the prepared files (with the run's profile)."""
    if not profile and not previous:
        console.print(f"  next: ftw render --recipe {recipe} --profile P --run {run}  (it uses the prepared data)")
        return
    profile = profile or profile_of(previous)
    ignore_fit = bool(previous.get("fit") and not previous["fit"].get("fits"))
    with console.status("re-rendering the run with the prepared data"):
        plan = render(recipe, profile, run, [], overrides, ignore_fit=ignore_fit)
    names = plan.train_args["dataset"] + (
        f", eval_dataset {plan.train_args['eval_dataset']}" if plan.train_args.get("eval_dataset") else ""
    )
    done(
        f"re-rendered {plan.dir / 'train.yaml'} (profile {plan.profile}): dataset {names}, "
        f"stage {plan.train_args['stage']}"
    )


def profile_of(previous: dict) -> str:
    path = Path(previous.get("profile_file") or "")
    if path.suffix == ".yaml" and path.is_file():
        return str(path)
    return previous["profile"]


COMMANDS = [data]
