"""`ftw data check`, `ftw data prepare`: the user's files, checked, then one clean training set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click
from rich.markup import escape

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
from wrapper.core.paths import SYNTH_ROWS, check_run_name, display_path, runs_dir
from wrapper.core.ui import console, done
from wrapper.data import knowledge, replay
from wrapper.data.check import (
    KIND_NAMES,
    CheckEvent,
    CheckStarted,
    FileChecked,
    FileStarted,
    check,
    languages_line,
    lengths_lines,
)
from wrapper.data.langs import GUESS_NOTE
from wrapper.data.prepare import PrepareResult, prepare, previous_plan, run_overrides
from wrapper.data.prepared import PREPARED
from wrapper.data.scan import EXACT, INVALID, FileReport, Item
from wrapper.data.tokens import Lengths
from wrapper.synth.job import REJECTS, Synthesized, synthesize_run
from wrapper.synth.teachers import TEACHER_FORMS
from wrapper.train.render import render

DUPLICATES_SHOWN = 10


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
    shown = CheckShown(max_problems)
    for event in check(list(files), recipe, report_path):
        shown.show(event)


class CheckShown:
    """`ftw data check`'s report as the rows stream past: every invalid row (or the first
    `max_problems` of a file), the first duplicates, each file's summary, the totals."""

    def __init__(self, max_problems: int):
        self.max_problems = max_problems
        self.cutoff_len = 0
        self.min_rating: float | None = None
        self.problems = self.duplicates = 0

    def show(self, event: CheckEvent) -> None:
        if isinstance(event, CheckStarted):
            self.started(event)
        elif isinstance(event, FileStarted):
            console.print(f"\n[bold]{escape(event.name)}[/bold]")
            self.problems = self.duplicates = 0
        elif isinstance(event, Item):
            self.item(event)
        elif isinstance(event, FileChecked):
            self.file_checked(event.report, event.kinds)
        else:
            if len(event.reports) > 1:
                self.totals(event.reports)
            if event.guessed_languages:
                console.print(f"languages {GUESS_NOTE}", style="dim")

    def started(self, start: CheckStarted) -> None:
        recipe, self.cutoff_len, self.min_rating = start.recipe, start.cutoff_len, start.recipe.data.min_rating
        console.print(
            f"Checking {len(start.files)} file(s) with recipe {recipe.name} "
            f"({display_path(recipe.doc.path)}): data.dedupe {recipe.data.dedupe}, cutoff_len {start.cutoff_len}"
        )
        console.print(
            f"  token lengths: {start.counter_description}"
            if start.counter_description
            else f"  token lengths skipped: {start.why_not}"
        )
        for path in start.skipped:
            console.print(
                f"  [yellow]skipped[/yellow] {escape(display_path(path))}: not a data file "
                "(.json, .jsonl, .txt, .md, .srt, .vtt)"
            )

    def item(self, item: Item) -> None:
        if item.status == INVALID:
            if not self.max_problems or self.problems < self.max_problems:
                console.print(f"  {item.where}: {item.problem.reason}", soft_wrap=True, markup=False)
                self.problems += 1
        elif self.duplicates < DUPLICATES_SHOWN:
            kind = "exact" if item.duplicate == EXACT else "near"
            console.print(f"  {item.where}: {kind} duplicate of {item.duplicate_of}", markup=False)
            self.duplicates += 1

    def file_checked(self, report: FileReport, kinds: Counter) -> None:
        if self.max_problems and report.invalid > self.problems:
            console.print(f"  ... and {report.invalid - self.problems} more invalid rows (--max-problems 0 shows all)")
        fmt = report.format or "unknown format"
        if report.documents and report.format in ("text", "plain", "subtitles"):
            fmt += f", {report.documents} document(s) cut into chunks"
        console.print(
            f"  {fmt}: {report.read} rows read, {report.valid} valid, {report.invalid} invalid"
            + (f", {report.filtered} below min_rating {self.min_rating:g}" if report.filtered else "")
        )
        if report.fatal:
            console.print(f"  [red]the file could not be read to its end[/red]: {escape(report.fatal)}", soft_wrap=True)
        if kinds:
            console.print("  invalid: " + ", ".join(f"{KIND_NAMES.get(k, k)} {n}" for k, n in kinds.most_common()))
        if report.valid:
            console.print(
                f"  duplicates: {report.exact_duplicates} exact, {report.near_duplicates} near "
                "(same after case and whitespace folding)"
            )
            console.print(f"  languages: {languages_line(report)}")
            for line in lengths_lines(report.lengths, self.cutoff_len):
                console.print(f"  {line}")

    def totals(self, reports: list[FileReport]) -> None:
        read = sum(r.read for r in reports)
        valid = sum(r.valid for r in reports)
        invalid = sum(r.invalid for r in reports)
        exact = sum(r.exact_duplicates for r in reports)
        near = sum(r.near_duplicates for r in reports)
        console.print(
            f"\n[bold]all {len(reports)} files[/bold]: {read} rows read, {valid} valid, {invalid} invalid; "
            f"duplicates {exact} exact, {near} near (across files too)"
        )
        total = Lengths.empty()
        for report in reports:
            total.merge(report.lengths)
        for line in lengths_lines(total, self.cutoff_len):
            console.print(f"  {line}")


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
    show_prepared(prepare(recipe, list(data_files), run, list(overrides)))
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
@click.option("--kind", type=click.Choice(SYNTH_KINDS), default=None, help="facts, qa or cot (default: the recipe's).")
@click.option("--per-chunk", type=click.IntRange(1, 20), default=None, help="qa, cot: rows asked per chunk.")
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
    made = synthesize_run(
        recipe, list(docs), teacher, teacher_model, run, parallel, limit, force, list(overrides) + extra
    )
    show_synthesized(made)


def show_synthesized(made: Synthesized) -> None:
    tally = made.tally
    console.print(
        f"  chunks: read {tally.chunks} = done {tally.done} + failed {tally.failed}"
        + (f"; {made.not_asked} not asked yet (--limit)" if made.not_asked else "")
    )
    console.print(f"  rows: generated {tally.generated} = kept {tally.kept} + rejected {tally.rejected}")
    if tally.facts or tally.documents:
        console.print(
            f"  facts: {tally.facts} asked in phrasings; {tally.documents} of the kept rows are rewrites of chunks"
        )
    if tally.reasons:
        console.print("  rejected: " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in tally.reasons.most_common()))
    console.print(
        f"  teacher: {tally.prompt_tokens} prompt + {tally.completion_tokens} generated tokens; "
        f"{tally.seconds:.0f} s of requests" + (f" (summed over {made.parallel} at once)" if made.parallel > 1 else "")
    )
    done(
        f"{tally.kept} row(s) in {display_path(made.folder / SYNTH_ROWS.name)}; every reject in "
        f"{display_path(made.folder / REJECTS)}. Next: ftw data prepare --recipe {made.recipe} --run {made.run}"
    )


def show_prepared(prepared: PrepareResult) -> None:
    tally, info = prepared.tally, prepared.info
    for source in prepared.sources:
        console.print(
            f"  {source.name} ({source.format}): read {source.read}, kept {source.kept}, rejected {source.rejected}",
            markup=False,
        )
    if tally.reasons:
        console.print(
            "  rejected: "
            + ", ".join(f"{KIND_NAMES.get(k, k.replace('_', ' '))} {n}" for k, n in tally.reasons.most_common())
        )
    console.print(f"  read {tally.read} = kept {tally.kept} + rejected {tally.rejected}  [green]✓[/green]")
    settings = info["settings"]
    if tally.knowledge is None:
        console.print(
            f"  split (seed {settings['seed']}, val_ratio {settings['val_ratio']}, per language): "
            f"train {tally.train} ({by_count(tally.train_langs)}), val {tally.val}"
            + (f" ({by_count(tally.val_langs)})" if tally.val else "")
        )
    else:
        words = {"train": by_count(tally.train_langs)}
        for line in knowledge.summary_lines(tally.knowledge, info["counts"], settings, words):
            console.print(f"  {line}", markup=False)
    if info.get("replay"):
        console.print(f"  {replay.summary_line(info['replay'])}", markup=False)
    if prepared.lengths is not None:
        for line in lengths_lines(prepared.lengths, settings["cutoff_len"], prepared.length_every):
            console.print(f"  {line}")
    files = info["files"]
    names = ", ".join(Path(f["path"]).name for f in files.values())
    done(
        f"{info['kind']} data in {Path(files['train']['path']).parent}: {names}, "
        f"{PREPARED}; {files['rejects']['rows']} row(s) in rejects.jsonl"
    )


def by_count(counts: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


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
