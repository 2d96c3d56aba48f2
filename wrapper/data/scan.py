"""One pass over the user's files, shared by `ftw data check` and `ftw data prepare`.

Files are streamed row by row (readers, formats), rows are grouped in batches of a few
thousand, and each batch gets, in bulk: the rows' content hashes (exact and near), their
languages, their token lengths, and their duplicate status against every earlier usable
row. Memory stays bounded by the batch plus 16 bytes per distinct row for each of the
two duplicate indexes (hashes and first locations, in numpy arrays; never the texts).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from wrapper.config.models import resolve_model
from wrapper.config.schema import TRAIN_DEFAULTS, DataSettings, Recipe
from wrapper.core.errors import FtwError
from wrapper.core.paths import SYNTH_ROWS, display_path
from wrapper.data.formats import (
    SFT_FORMATS,
    Row,
    canonical,
    check_encodable,
    detect_format,
    near_key,
    parse_row,
    unknown_format,
)
from wrapper.data.langs import guess_language
from wrapper.data.readers import (
    Problem,
    Progress,
    Record,
    expand_paths,
    kind_of_file,
    read_json_records,
    read_plain_segments,
    read_subtitle_segments,
)
from wrapper.data.tokens import Lengths, TokenCounter, chunk_segments, load_counter, load_fast_tokenizer

BATCH_ROWS = 4096
# Item.status
OK, INVALID, FILTERED = "ok", "invalid", "filtered"
# duplicate kinds from DuplicateIndex
NEW, EXACT, NEAR = 0, 1, 2


@dataclass
class Source:
    index: int
    path: Path
    kind: str  # json | plain | subtitles | unknown

    @cached_property
    def name(self) -> str:
        return display_path(self.path)

    def where(self, line: int) -> str:
        return f"{self.name}:{line}"


@dataclass
class Item:
    """One row of a source: usable (status ok) or not, with everything the reports need."""

    source: Source
    line: int
    status: str
    row: Row | None = None
    problem: Problem | None = None
    original: Any = None  # the parsed JSON value (or raw text) as read, for rejects.jsonl
    lang: str | None = None
    lang_guessed: bool = False
    tokens: int | None = None
    exact: int = 0
    near: int = 0
    duplicate: int = NEW  # NEW, EXACT or NEAR
    duplicate_of: str | None = None

    @property
    def where(self) -> str:
        return self.source.where(self.line)


@dataclass
class FileReport:
    """What one source held; filled as its rows stream past."""

    source: Source
    format: str | None = None
    read: int = 0
    valid: int = 0
    invalid: int = 0
    filtered: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    fatal: str | None = None
    languages: dict[str, list[int]] = field(default_factory=dict)  # lang -> [from field, guessed]
    lengths: Lengths = field(default_factory=Lengths.empty)
    sha256: str = ""
    bytes: int = 0
    documents: int = 0  # raw text: files or {"text"} rows that were chunked

    def count(self, item: Item) -> None:
        self.read += 1
        if item.status == INVALID:
            self.invalid += 1
            return
        if item.status == FILTERED:
            self.filtered += 1
            return
        self.valid += 1
        if item.duplicate == EXACT:
            self.exact_duplicates += 1
        elif item.duplicate == NEAR:
            self.near_duplicates += 1
        counts = self.languages.setdefault(item.lang or "unknown", [0, 0])
        counts[1 if item.lang_guessed else 0] += 1
        if item.tokens is not None:
            self.lengths.add(item.tokens)


def pack_location(source: Source, line: int) -> int:
    return ((source.index + 1) << 40) | line


class DuplicateIndex:
    """Hashes of every usable row so far, sorted in numpy arrays with the location of their
    first occurrence: exact (content as parsed) and near (case and whitespace folded)."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        self.keys = {EXACT: np.empty(0, np.uint64), NEAR: np.empty(0, np.uint64)}
        self.locations = {EXACT: np.empty(0, np.uint64), NEAR: np.empty(0, np.uint64)}

    def _level(self, level: int, hashes: np.ndarray, locations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys, known = self.keys[level], self.locations[level]
        at = np.searchsorted(keys, hashes)
        safe = np.minimum(at, max(len(keys) - 1, 0))
        found = (at < len(keys)) & (keys[safe] == hashes) if len(keys) else np.zeros(len(hashes), bool)
        unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        first_of_row = first[inverse.reshape(-1)]
        earlier_in_batch = first_of_row < np.arange(len(hashes))
        duplicate = found | earlier_in_batch
        where = np.where(found, known[safe] if len(keys) else 0, locations[first_of_row])
        new = ~found[first]
        if new.any():
            new_keys, new_locations = unique[new], locations[first[new]]
            slots = np.searchsorted(keys, new_keys)
            self.keys[level] = np.insert(keys, slots, new_keys)
            self.locations[level] = np.insert(known, slots, new_locations)
        return duplicate, where

    def classify(self, items: list[Item]) -> None:
        """Set duplicate / duplicate_of on usable items (in order), and remember the new ones."""
        usable = [item for item in items if item.status == OK]
        if not usable:
            return
        locations = np.array([pack_location(i.source, i.line) for i in usable], np.uint64)
        exact_dup, exact_at = self._level(EXACT, np.array([i.exact for i in usable], np.uint64), locations)
        near_dup, near_at = self._level(NEAR, np.array([i.near for i in usable], np.uint64), locations)
        for index, item in enumerate(usable):
            if exact_dup[index]:
                item.duplicate, item.duplicate_of = EXACT, self.describe(int(exact_at[index]))
            elif near_dup[index]:
                item.duplicate, item.duplicate_of = NEAR, self.describe(int(near_at[index]))

    def describe(self, location: int) -> str:
        return self.sources[(location >> 40) - 1].where(location & ((1 << 40) - 1))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.keys.values(), *self.locations.values()))


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class Scanner:
    """Sources -> batches of Items, with hashes, languages, lengths and duplicate status."""

    def __init__(
        self,
        paths: list[Path],
        settings: DataSettings,
        counter: TokenCounter | None,
        cutoff_len: int,
        on_bytes: Callable[[int], None] | None = None,
    ):
        self.sources = [Source(i, path, kind_of_file(path)) for i, path in enumerate(paths)]
        self.settings = settings
        self.counter = counter
        self.counter_missing = ""  # why there is no counter, for the message
        self.cutoff_len = cutoff_len
        self.length_every = 1  # count the tokens of every row, or of 1 in N (chosen by content hash)
        self.on_bytes = on_bytes
        self.index = DuplicateIndex(self.sources)
        self.reports = [FileReport(source) for source in self.sources]

    # --- rows of one source ------------------------------------------------------------

    def _json_items(self, source: Source, report: FileReport, seen: Progress) -> Iterator[Item]:
        field_map = self.settings.field_map.as_dict() or None
        need_rating = self.settings.min_rating is not None
        for record in read_json_records(source.path, seen):
            if record.problem is not None:
                if record.fatal:
                    report.fatal = f"{source.where(record.line)}: {record.problem.reason}"
                yield Item(source, record.line, INVALID, problem=record.problem, original=record.raw)
                continue
            fmt = detect_format(record.value, field_map)
            if fmt is None:
                yield Item(source, record.line, INVALID, problem=unknown_format(record.value), original=record.value)
                continue
            if report.format is None:
                report.format = fmt
            elif fmt != report.format and not {fmt, report.format} <= set(SFT_FORMATS):
                problem = Problem("mixed_format", f"a {fmt} row in a file of {report.format} rows")
                yield Item(source, record.line, INVALID, problem=problem, original=record.value)
                continue
            try:
                row = parse_row(record.value, fmt, field_map, need_rating)
            except Problem as problem:
                yield Item(source, record.line, INVALID, problem=problem, original=record.value)
                continue
            if row.text is not None:
                report.documents += 1
                yield from self._chunked(source, [(record.line, row.text)], record.value, row.lang)
                continue
            status = OK
            problem = None
            if need_rating and row.rating is not None and row.rating < self.settings.min_rating:
                status = FILTERED
                problem = Problem(
                    "below_min_rating", f"rating {row.rating:g} is below data.min_rating {self.settings.min_rating:g}"
                )
            yield Item(source, record.line, status, row=row, problem=problem, original=record.value)

    def _chunked(self, source: Source, segments, original: Any, lang: str | None) -> Iterator[Item]:
        if self.counter is None:
            raise FtwError(
                f"{source.name}: raw text is cut into chunks of cutoff_len tokens, which needs the "
                f"recipe's tokenizer: {self.counter_missing or 'none given'}"
            )
        limit = self.counter.chunk_limit(self.cutoff_len)
        for line, text, tokens in self.counter.chunks(segments, limit, self.settings.chunk_overlap):
            row = Row(text=text, lang=lang)
            item = Item(source, line, OK, row=row, original=original)
            item.tokens = tokens + self.counter.text_extra
            yield item

    def _text_items(self, source: Source, report: FileReport, seen: Progress) -> Iterator[Item]:
        reader = read_plain_segments if source.kind == "plain" else read_subtitle_segments
        report.format = source.kind
        report.documents += 1
        bad: list[Record] = []

        def segments() -> Iterator[tuple[int, str]]:
            for record in reader(source.path, seen):
                if record.problem is not None:
                    bad.append(record)
                else:
                    yield record.line, record.value

        for item in self._chunked(source, segments(), None, None):
            item.original = None
            while bad:
                record = bad.pop(0)
                yield Item(source, record.line, INVALID, problem=record.problem, original=record.raw)
            yield item
        for record in bad:
            yield Item(source, record.line, INVALID, problem=record.problem, original=record.raw)

    def items(self, source: Source) -> Iterator[Item]:
        report = self.reports[source.index]
        seen = Progress(self.on_bytes)
        try:
            if source.kind == "json":
                yield from self._json_items(source, report, seen)
            elif source.kind in ("plain", "subtitles"):
                yield from self._text_items(source, report, seen)
            else:
                problem = Problem(
                    "unknown_format",
                    f"unknown format: {source.path.suffix or 'no extension'} "
                    "(expected .json, .jsonl, .txt, .md, .srt or .vtt)",
                )
                report.fatal = f"{source.where(1)}: {problem.reason}"
                yield Item(source, 1, INVALID, problem=problem)
        finally:
            seen.flush()
            report.sha256 = seen.sha256.hexdigest()
            report.bytes = seen.bytes

    # --- batches -------------------------------------------------------------------------

    def _finish(self, batch: list[Item]) -> None:
        usable = [item for item in batch if item.status == OK]
        for item in usable:
            row = item.row
            try:
                content = check_encodable(canonical(row))
                if row.lang:
                    check_encodable(row.lang)
            except Problem as problem:
                item.status, item.problem = INVALID, problem
                continue
            item.exact = _hash(content)
            item.near = _hash(near_key(content.decode("utf-8")).encode("utf-8"))
            if row.lang:
                item.lang = row.lang
            else:
                sample = row.text if row.text is not None else "\n".join(c[:1000] for _, c in row.turns[:2])
                item.lang, item.lang_guessed = guess_language(sample[:1000].encode("utf-8", "replace")), True
        for item in batch:
            if item.status == FILTERED and item.row is not None:
                item.lang = item.row.lang
        self.index.classify(batch)
        if self.counter is not None:
            every = self.length_every
            need = [
                item
                for item in batch
                if item.status == OK and item.tokens is None and (every == 1 or item.exact % every == 0)
            ]
            for item, tokens in zip(need, self.counter.count_rows([item.row for item in need])):
                item.tokens = tokens
        for item in batch:
            self.reports[item.source.index].count(item)

    def batches(self, source: Source) -> Iterator[list[Item]]:
        batch: list[Item] = []
        for item in self.items(source):
            batch.append(item)
            if len(batch) >= BATCH_ROWS:
                self._finish(batch)
                yield batch
                batch = []
        if batch:
            self._finish(batch)
            yield batch

    def total_bytes(self) -> int:
        return sum(s.path.stat().st_size for s in self.sources if s.path.is_file())


def recipe_cutoff_len(recipe: Recipe) -> int:
    return int(recipe.train.get("cutoff_len") or TRAIN_DEFAULTS["cutoff_len"])


def _no_tokenizer(recipe: Recipe, exc: Exception) -> str:
    return f"the tokenizer of {recipe.model.base} can't be loaded here ({str(exc).splitlines()[0]})"


def recipe_counter(recipe: Recipe) -> tuple[TokenCounter | None, str]:
    """The recipe's tokenizer and chat template as a TokenCounter, or None and why not."""
    try:
        base = resolve_model(recipe.model.base, recipe, "model.base")
        return load_counter(base, recipe.model.template, recipe.system), ""
    except (FtwError, OSError, ValueError, KeyError) as exc:
        return None, _no_tokenizer(recipe, exc)


def recipe_chunker(recipe: Recipe) -> tuple[Callable | None, str]:
    """chunker(segments, limit, overlap) -> (first line, text, tokens) chunks in the recipe's
    tokenizer: its tokenizer.json alone where there is one (fast to load), else the whole
    TokenCounter; or None and why not."""
    try:
        base = resolve_model(recipe.model.base, recipe, "model.base")
        fast = load_fast_tokenizer(base)
    except (FtwError, OSError, ValueError, KeyError) as exc:
        return None, _no_tokenizer(recipe, exc)
    if fast is not None:
        return functools.partial(chunk_segments, fast), ""
    counter, why_not = recipe_counter(recipe)
    return (counter.chunks if counter else None), why_not


def input_paths(
    given: list[str], recipe: Recipe | None = None, run_dir: Path | None = None
) -> tuple[list[Path], list[Path]]:
    """Files named on the command line, else the recipe's dataset entries, else the run's
    `ftw data synth` rows; folders walked."""
    if given:
        paths = [Path(p).expanduser().resolve() for p in given]
    elif recipe.dataset:
        paths = [(recipe.folder / p).resolve() for p in recipe.dataset]
    elif run_dir is not None and (run_dir / SYNTH_ROWS).is_file():
        paths = [run_dir / SYNTH_ROWS]
    else:
        raise FtwError(
            f"{recipe.doc.path.name} lists no dataset and no rows were synthesized for this run: "
            "give --data FILE, or make rows from documents first: "
            f"ftw data synth --recipe {recipe.name} --run {run_dir.name if run_dir else 'RUN'} --docs DOCS"
        )
    for path in paths:
        if not path.exists():
            raise FtwError(f"data file not found: {path}")
    files, skipped = expand_paths(paths)
    if not files:
        raise FtwError(
            f"no data files in {', '.join(str(p) for p in paths)} (expected .json, .jsonl, .txt, .md, .srt or .vtt)"
        )
    return files, skipped
