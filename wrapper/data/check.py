"""`ftw data check FILE ...`: a report per file, every problem with its file:line.

Rows read and valid; each invalid row with the reason; exact and near duplicates; token
lengths in the recipe's training format with the cutoff_len that keeps 95% and 99% of
rows whole; languages. Exit code 1 when any row is invalid (2 when the command itself
can't run: a missing file, a bad recipe).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from wrapper.config.recipes import load_recipe
from wrapper.config.schema import Recipe
from wrapper.core.errors import FtwError
from wrapper.core.ui import byte_progress
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
    "bad_group": "fact or chunk not an id",
}


class DataProblems(FtwError):
    """`ftw data check` found invalid rows: the report is printed, the exit code says so."""

    exit_code = 1


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


@dataclass
class CheckStarted:
    """What is checked, and how (before the first file is read)."""

    recipe: Recipe
    files: list[Path]
    skipped: list[Path]  # not data files
    cutoff_len: int
    counter_description: str | None  # how tokens are counted; None: lengths are skipped
    why_not: str  # why lengths are skipped


@dataclass
class FileStarted:
    name: str


@dataclass
class FileChecked:
    report: FileReport
    kinds: Counter  # invalid rows by kind


@dataclass
class AllChecked:
    reports: list[FileReport]
    guessed_languages: bool  # some row's language was guessed, not read from a field


CheckEvent = CheckStarted | FileStarted | Item | FileChecked | AllChecked


class ReportFile:
    """--report: every problem and duplicate, and each file's summary, one JSON object a line."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, record: dict) -> None:
        if self.handle:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def item(self, item: Item) -> None:
        if item.status == INVALID:
            problem = item.problem
            self.write(
                {
                    "where": item.where,
                    "file": item.source.name,
                    "line": item.line,
                    "kind": problem.kind,
                    "reason": problem.reason,
                }
            )
        else:
            kind = "exact" if item.duplicate == EXACT else "near"
            self.write({"where": item.where, "kind": f"{kind}_duplicate", "duplicate_of": item.duplicate_of})


def check(given: list[str], recipe_name: str, report_path: Path | None = None) -> Iterator[CheckEvent]:
    """The check as it goes: what is checked, then each file's invalid rows and duplicates (as Items)
    and its report, then all reports. Ends with DataProblems where any row is invalid."""
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
    yield CheckStarted(recipe, files, skipped, cutoff_len, counter.description if counter else None, why_not)
    with ExitStack() as stack:
        report_file = ReportFile(
            stack.enter_context(report_path.open("w", encoding="utf-8", newline="\n")) if report_path else None
        )
        progress = stack.enter_context(byte_progress())
        task = progress.add_task("reading", total=scanner.total_bytes())
        scanner.on_bytes = lambda n: progress.advance(task, n)
        for source in scanner.sources:
            yield FileStarted(source.name)
            kinds: Counter = Counter()
            for batch in scanner.batches(source):
                for item in batch:
                    if item.status == INVALID:
                        kinds[item.problem.kind] += 1
                    elif item.duplicate not in (EXACT, NEAR):
                        continue
                    report_file.item(item)
                    yield item
            report = scanner.reports[source.index]
            yield FileChecked(report, kinds)
            report_file.write({"summary": summary_record(report, kinds)})
    reports = scanner.reports
    yield AllChecked(reports, any(r.languages.get(lang, [0, 0])[1] for r in reports for lang in r.languages))
    invalid = sum(r.invalid for r in reports)
    if invalid:
        bad_files = sum(1 for r in reports if r.invalid)
        raise DataProblems(f"{invalid} invalid row(s) in {bad_files} file(s); each is listed above with its file:line")


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
