"""`ftw data check FILE ...`: a report per file, every problem with its file:line.

Rows read and valid; each invalid row with the reason; exact and near duplicates; token
lengths in the recipe's training format with the cutoff_len that keeps 95% and 99% of
rows whole; languages. Exit code 1 when any row is invalid (2 when the command itself
can't run: a missing file, a bad recipe).
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from wrapper.config.recipes import load_recipe
from wrapper.core.errors import FtwError
from wrapper.core.paths import display_path
from wrapper.core.ui import console
from wrapper.data.langs import GUESS_NOTE
from wrapper.data.scan import (
    EXACT,
    INVALID,
    NEAR,
    FileReport,
    Item,
    Scanner,
    input_paths,
    recipe_counter,
    recipe_cutoff_len,
)
from wrapper.data.tokens import Lengths

KIND_NAMES = {
    "invalid_json": "invalid JSON",
    "not_utf8": "not UTF-8",
    "missing_field": "missing field",
    "empty_field": "empty field",
    "wrong_type": "wrong type",
    "unknown_format": "unknown format",
    "mixed_format": "mixed formats",
    "bad_turns": "bad turns",
    "below_min_rating": "below min_rating",
}
DUPLICATES_SHOWN = 10


class DataProblems(FtwError):
    """`ftw data check` found invalid rows: the report is printed, the exit code says so."""

    exit_code = 1


def byte_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def languages_line(report: FileReport) -> str:
    parts = []
    for lang, (from_field, guessed) in sorted(report.languages.items(), key=lambda kv: -sum(kv[1])):
        how = (
            "lang field"
            if not guessed
            else "guessed"
            if not from_field
            else f"{from_field} lang field, {guessed} guessed"
        )
        parts.append(f"{lang} {from_field + guessed} ({how})")
    return ", ".join(parts) or "none"


def lengths_lines(lengths: Lengths, cutoff_len: int, every: int = 1) -> list[str]:
    stats = lengths.summary()
    if not stats["rows"]:
        return []
    cut = lengths.longer_than(cutoff_len)
    if every == 1:
        sample, truncated = "", f"{cut} row(s) ({cut / stats['rows']:.1%})"
    else:
        sample = f" (estimated from 1 row in {every}: {stats['rows']} rows counted)"
        truncated = f"about {cut / stats['rows']:.1%} of the rows"
    return [
        f"tokens{sample}: min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, "
        f"p99 {stats['p99']}, max {stats['max']}",
        f"cutoff_len that keeps rows whole: 95% -> {stats['p95']}, 99% -> {stats['p99']}; the recipe's "
        f"cutoff_len {cutoff_len} truncates {truncated}",
    ]


class Listing:
    """The lines of one file's report as its rows stream past: every invalid row (or the first
    `max_problems`), the first duplicates, and everything in the --report file."""

    def __init__(self, max_problems: int, report_file):
        self.max_problems = max_problems
        self.report_file = report_file
        self.shown = self.duplicates_shown = 0
        self.kinds: Counter = Counter()

    def write(self, record: dict) -> None:
        if self.report_file:
            self.report_file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def add(self, item: Item) -> None:
        if item.status == INVALID:
            self.kinds[item.problem.kind] += 1
            if not self.max_problems or self.shown < self.max_problems:
                console.print(f"  {item.where}: {item.problem.reason}", soft_wrap=True, markup=False)
                self.shown += 1
            self.write(
                {
                    "where": item.where,
                    "file": item.source.name,
                    "line": item.line,
                    "kind": item.problem.kind,
                    "reason": item.problem.reason,
                }
            )
        elif item.duplicate in (EXACT, NEAR):
            kind = "exact" if item.duplicate == EXACT else "near"
            if self.duplicates_shown < DUPLICATES_SHOWN:
                console.print(f"  {item.where}: {kind} duplicate of {item.duplicate_of}", markup=False)
                self.duplicates_shown += 1
            self.write({"where": item.where, "kind": f"{kind}_duplicate", "duplicate_of": item.duplicate_of})


def check(
    given: list[str], recipe_name: str, max_problems: int = 0, report_path: Path | None = None
) -> list[FileReport]:
    recipe = load_recipe(recipe_name)
    files, skipped = input_paths(given)
    cutoff_len = recipe_cutoff_len(recipe)
    counter, why_not = recipe_counter(recipe)
    scanner = Scanner(files, recipe.data, counter, cutoff_len)
    scanner.counter_missing = why_not
    if counter is None and any(s.kind in ("plain", "subtitles") for s in scanner.sources):
        raise FtwError(
            f"raw text is cut into chunks of cutoff_len tokens, which needs the recipe's tokenizer: {why_not}"
        )
    console.print(
        f"Checking {len(files)} file(s) with recipe {recipe.name} "
        f"({display_path(recipe.doc.path)}): data.dedupe {recipe.data.dedupe}, cutoff_len {cutoff_len}"
    )
    console.print(f"  token lengths: {counter.description}" if counter else f"  token lengths skipped: {why_not}")
    for path in skipped:
        console.print(
            f"  [yellow]skipped[/yellow] {escape(display_path(path))}: not a data file "
            "(.json, .jsonl, .txt, .md, .srt, .vtt)"
        )
    with ExitStack() as stack:
        report_file = stack.enter_context(report_path.open("w", encoding="utf-8")) if report_path else None
        progress = stack.enter_context(byte_progress())
        task = progress.add_task("reading", total=scanner.total_bytes())
        scanner.on_bytes = lambda n: progress.advance(task, n)
        for source in scanner.sources:
            console.print(f"\n[bold]{escape(source.name)}[/bold]")
            listing = Listing(max_problems, report_file)
            for batch in scanner.batches(source):
                for item in batch:
                    listing.add(item)
            report = scanner.reports[source.index]
            if max_problems and report.invalid > listing.shown:
                console.print(
                    f"  ... and {report.invalid - listing.shown} more invalid rows (--max-problems 0 shows all)"
                )
            print_file_summary(report, listing.kinds, cutoff_len, recipe.data.min_rating)
            listing.write({"summary": summary_record(report, listing.kinds)})
    reports = scanner.reports
    if len(reports) > 1:
        print_totals(reports, cutoff_len)
    if any(r.languages.get(lang, [0, 0])[1] for r in reports for lang in r.languages):
        console.print(f"languages {GUESS_NOTE}", style="dim")
    invalid = sum(r.invalid for r in reports)
    if invalid:
        bad_files = sum(1 for r in reports if r.invalid)
        raise DataProblems(f"{invalid} invalid row(s) in {bad_files} file(s); each is listed above with its file:line")
    return reports


def print_file_summary(report: FileReport, kinds: Counter, cutoff_len: int, min_rating: float | None) -> None:
    fmt = report.format or "unknown format"
    if report.documents and report.format in ("text", "plain", "subtitles"):
        fmt += f", {report.documents} document(s) cut into chunks"
    console.print(
        f"  {fmt}: {report.read} rows read, {report.valid} valid, {report.invalid} invalid"
        + (f", {report.filtered} below min_rating {min_rating:g}" if report.filtered else "")
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
        for line in lengths_lines(report.lengths, cutoff_len):
            console.print(f"  {line}")


def summary_record(report: FileReport, kinds: Counter) -> dict:
    return {
        "file": report.source.name,
        "format": report.format,
        "read": report.read,
        "valid": report.valid,
        "invalid": report.invalid,
        "filtered": report.filtered,
        "invalid_by_kind": dict(kinds),
        "exact_duplicates": report.exact_duplicates,
        "near_duplicates": report.near_duplicates,
        "languages": {k: sum(v) for k, v in report.languages.items()},
        "tokens": report.lengths.summary(),
        "fatal": report.fatal,
        "sha256": report.sha256,
    }


def print_totals(reports: list[FileReport], cutoff_len: int) -> None:
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
    for line in lengths_lines(total, cutoff_len):
        console.print(f"  {line}")
