"""`ftw data prepare`: the user's files -> one clean, split, counted training set in the run.

Merges the files, normalises every row to one format (ShareGPT conversations, or
{"text"} chunks for continued pre-training), drops invalid rows and duplicates as the
recipe's `data:` section says, splits train/validation (seeded, stratified by language)
and writes into runs/RUN/data/:

  train.jsonl, val.jsonl   the rows LLaMA-Factory trains and evaluates on
  probes.jsonl, unseen.jsonl  instead of val.jsonl when rows carry `fact` (data/knowledge.py)
                           train.jsonl also holds data.replay's general rows when the recipe names a file
                           (data/replay.py)
  rejects.jsonl            every dropped row with its source file:line and the reason
  prepared.json            counts, settings, sources and outputs with sha256

then dataset_info.json in the run folder. `ftw data prepare` then renders the run again
when it was rendered (`ftw render` of that run uses the prepared data while it exists). Every row read is
either kept or in rejects.jsonl: kept + rejected = read is checked before anything is kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.markup import escape

from wrapper.config.recipes import load_recipe
from wrapper.config.schema import Recipe
from wrapper.core import manifest
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import staged_dir, write_text_atomic
from wrapper.core.paths import check_run_name, display_path, runs_dir
from wrapper.core.ui import byte_progress, step
from wrapper.data import knowledge, replay
from wrapper.data.formats import BAD_GROUP, near_key
from wrapper.data.prepared import DATA_DIR, PREPARED, load_prepared
from wrapper.data.replay import ReplayTally
from wrapper.data.scan import (
    EXACT,
    FILTERED,
    INVALID,
    NEAR,
    Item,
    Scanner,
    Source,
    input_paths,
    recipe_counter,
    recipe_cutoff_len,
)
from wrapper.data.tokens import Lengths

LENGTH_SAMPLE_BYTES = 64 << 20


class LanguageSplit:
    """Seeded validation picks, exact per language: among a language's first n rows,
    floor(n * ratio) or one more are validation rows. Pick k of a language falls at a
    random position in [floor((k-1)/ratio), floor(k/ratio)) of that language's rows, so
    picks spread over the whole file and the state is a few numbers per language."""

    def __init__(self, ratio: float, seed: int):
        self.ratio = ratio
        self.seed = seed
        self.state: dict[str, list] = {}  # lang -> [rows seen, next pick number, its position, rng]
        self.groups: dict[str, str] = {}  # chunk id -> side

    def _position(self, rng: random.Random, pick: int) -> int:
        low = math.floor((pick - 1) / self.ratio)
        high = math.floor(pick / self.ratio)
        return rng.randrange(low, max(high, low + 1))

    def side(self, lang: str, group: str | None = None) -> str:
        """ "val" or "train" for a row; rows of one group (the document chunk a synthesized row
        was written from) all go where the first of them went, so no chunk is on both sides."""
        if group in self.groups:
            return self.groups[group]
        side = "val" if self.is_validation(lang) else "train"
        if group is not None:
            self.groups[group] = side
        return side

    def is_validation(self, lang: str) -> bool:
        if self.ratio <= 0:
            return False
        state = self.state.get(lang)
        if state is None:
            rng = random.Random(f"{self.seed}:{lang}")
            state = self.state[lang] = [0, 1, self._position(rng, 1), rng]
        seen, pick, position, rng = state
        chosen = seen == position
        if chosen:
            state[1] = pick + 1
            state[2] = self._position(rng, pick + 1)
        state[0] = seen + 1
        return chosen


class JsonlWriter:
    """A JSONL file written row by row, with its row count, sha256 and the keys its rows hold."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = path.open("wb")
        self.sha256 = hashlib.sha256()
        self.rows = 0
        self.bytes = 0
        self.keys: set[str] = set()

    def write(self, row: dict) -> None:
        try:
            data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a rejected row with invalid bytes or lone surrogates: keep them as \u escapes
            data = (json.dumps(row) + "\n").encode("utf-8")
        self.handle.write(data)
        self.sha256.update(data)
        self.rows += 1
        self.bytes += len(data)
        self.keys.update(row)

    def close(self) -> None:
        self.handle.close()

    def record(self, final_dir: Path) -> dict:
        return {
            "path": str(final_dir / self.path.name),
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256.hexdigest(),
            "keys": sorted(self.keys),
        }


@dataclass
class Tally:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    train: int = 0
    val: int = 0
    reasons: Counter = field(default_factory=Counter)
    train_langs: Counter = field(default_factory=Counter)
    val_langs: Counter = field(default_factory=Counter)
    per_source: dict[int, list[int]] = field(default_factory=dict)  # index -> [read, kept, rejected]
    row_kinds: Counter = field(default_factory=Counter)  # kept rows: conversation / text
    facts: int = 0  # kept rows that carry `fact`: the knowledge split (data/knowledge.py) when any do
    chunk_tokens: dict[str, int] = field(default_factory=dict)  # chunk -> tokens of its text, where rows say
    probes: int = 0
    unseen: int = 0
    held_langs: dict[str, Counter] = field(default_factory=dict)  # probes / unseen -> rows per language
    knowledge: dict | None = None
    replay: ReplayTally | None = None  # data.replay's rows, counted apart from the data's


@dataclass
class SourceCount:
    name: str
    format: str
    read: int
    kept: int
    rejected: int


@dataclass
class PrepareResult:
    """What `ftw data prepare` wrote and counted, for its summary."""

    info: dict  # what prepared.json holds
    tally: Tally
    sources: list[SourceCount]
    lengths: Lengths | None  # the rows' token lengths (None without the recipe's tokenizer)
    length_every: int  # lengths counted for 1 row in this many


def reject_reason(item: Item, dedupe: str) -> tuple[str, str] | None:
    """(kind, reason) when the item is dropped, else None."""
    if item.status in (INVALID, FILTERED):
        return item.problem.kind, item.problem.reason
    if item.duplicate == EXACT and dedupe in ("exact", "near"):
        return "exact_duplicate", f"exact duplicate of {item.duplicate_of}"
    if item.duplicate == NEAR and dedupe == "near":
        return "near_duplicate", f"near duplicate of {item.duplicate_of} (same after case and whitespace folding)"
    return None


def reject_record(item: Item, kind: str, reason: str) -> dict:
    record: dict[str, Any] = {"source": item.where, "kind": kind, "reason": reason}
    if item.row is not None and item.row.text is not None:
        record["text"] = item.row.text  # a chunk of raw text
    elif item.status == INVALID and isinstance(item.original, str):
        record["raw"] = item.original  # a line that isn't JSON (or isn't UTF-8)
    else:
        record["row"] = item.original
    return record


def output_row(item: Item) -> dict:
    out = item.row.as_output()
    out["lang"] = item.lang
    out["source"] = item.where
    if item.row.fact is not None:
        out["fact"] = item.row.fact
    if item.row.chunk is not None:  # a synthesized row: keep the document place it was written from
        out["chunk"] = item.row.chunk
        out["document"] = item.original.get("source")
    return out


def refuse_bad_group(item: Item) -> None:
    """A `fact` or `chunk` that isn't an id: the data is refused, not the row set aside, since its fact's
    other rows would then be split without it."""
    raise FtwError(
        f"{item.where}: {item.problem.reason}. Nothing was prepared; `ftw data check {item.source.name}` lists "
        "every such row. Fix them, then run `ftw data prepare` again"
    )


def _check_stage(recipe: Recipe, kind: str) -> None:
    stage = recipe.train.get("stage", "sft")
    if kind == "pt" and stage != "pt" and "stage" in recipe.train:
        raise FtwError(
            f"{recipe.doc.origin('train.stage')}: the data is raw text (continued pre-training), "
            f"but the recipe says stage: {stage}. Remove the key or set stage: pt."
        )
    if kind == "sft" and stage == "pt":
        raise FtwError(
            f"{recipe.doc.origin('train.stage')}: stage pt trains on raw text, but the data is "
            "conversations (Alpaca/ShareGPT/OpenAI/chat log). Use stage: sft, or give text files."
        )
    if recipe.data.val_ratio > 0 and recipe.train.get("val_size"):
        raise FtwError(
            f"{recipe.doc.origin('train.val_size')}: the prepared data has its own validation split "
            "(data.val_ratio); remove train.val_size, or set data.val_ratio: 0"
        )


def data_kind(sources: list[Source]) -> str:
    kinds = {("pt" if s.kind in ("plain", "subtitles") else "json") for s in sources}
    return "pt" if kinds == {"pt"} else "mixed" if "pt" in kinds else "json"


def previous_plan(run_dir: Path) -> dict:
    """The plan the run was rendered with, or {} for a run never rendered."""
    if not (run_dir / manifest.MANIFEST).is_file():
        return {}
    return manifest.load(run_dir).get("plan") or {}


def run_overrides(previous: dict, overrides: list[str]) -> list[str]:
    """The run's --set values (kept from its render) followed by the new ones."""
    return list(previous.get("overrides") or []) + list(overrides)


def prepare(recipe_name: str, data_files: list[str], run: str, overrides: list[str] = ()) -> PrepareResult:
    """Write runs/RUN/data and dataset_info.json; return what prepared.json holds, with the counts."""
    check_run_name(run)
    run_dir = runs_dir() / run
    overrides = run_overrides(previous_plan(run_dir), list(overrides))
    recipe = load_recipe(recipe_name, overrides)
    settings = recipe.data
    files, skipped = input_paths(data_files, recipe, run_dir)
    general = replay.replay_file(recipe)  # read last, as one more source: the same readers, checks, duplicates
    cutoff_len = recipe_cutoff_len(recipe)
    counter, why_not = recipe_counter(recipe)
    scanner = Scanner(files + ([general] if general else []), settings, counter, cutoff_len)
    scanner.counter_missing = why_not
    # Lengths are the job of `ftw data check`; here a sample of ~64 MB of rows is enough to warn.
    scanner.length_every = max(1, math.ceil(scanner.total_bytes() / LENGTH_SAMPLE_BYTES))
    kind = data_kind(scanner.sources[: len(files)])
    if kind == "mixed":
        raise FtwError(
            "the files mix raw text (.txt/.md/.srt/.vtt) with JSON rows: a run trains on one or the "
            "other (stage pt on text, sft on conversations). Prepare them as separate runs."
        )
    if kind == "pt" and counter is None:
        raise FtwError(
            f"raw text is cut into chunks of cutoff_len tokens, which needs the recipe's tokenizer: {why_not}"
        )
    if kind == "pt":
        _check_stage(recipe, kind)  # JSON files are known to be text or conversations only once read
    if kind == "pt" and settings.chunk_overlap * 2 >= counter.chunk_limit(cutoff_len):
        raise FtwError(
            f"{recipe.doc.origin('data.chunk_overlap')}: chunk_overlap {settings.chunk_overlap} must be "
            f"less than half a chunk ({counter.chunk_limit(cutoff_len)} tokens at cutoff_len {cutoff_len})"
        )

    step(
        f"Preparing run [bold]{run}[/bold] from {len(files)} file(s), recipe {recipe.name}: "
        f"val_ratio {settings.val_ratio}, seed {settings.seed}, dedupe {settings.dedupe}"
        + (f", min_rating {settings.min_rating:g}" if settings.min_rating is not None else "")
        + (f", replay {escape(display_path(general))} at share {settings.replay_share:g}" if general else "")
    )
    for path in skipped:
        step(f"  [yellow]skipped[/yellow] {escape(display_path(path))}: not a data file")
    run_dir.mkdir(parents=True, exist_ok=True)
    final_dir = run_dir / DATA_DIR
    with staged_dir(final_dir) as staging:
        pinned = frozenset(near_key(check.prompt) for check in recipe.checks)
        tally, outputs, text_kind = _write(scanner, staging, final_dir, settings, pinned, general is not None)
        if kind == "json" and text_kind:
            kind = "pt"
        if kind == "json":
            kind = "sft"
        _check_invariant(scanner, tally)
        if len(tally.row_kinds) > 1:
            raise FtwError(
                'the files mix raw text ({"text"} rows) with conversations'
                + (" (data.replay's rows count too)" if general else "")
                + ": a run trains on one or the other (stage pt on text, sft on conversations). "
                "Prepare them as separate runs."
            )
        if tally.kept == 0:
            raise FtwError("no rows left to train on: every row was rejected (run `ftw data check` on the files)")
        _check_stage(recipe, kind)
        info = _prepared_info(recipe, scanner, tally, outputs, kind, counter, cutoff_len, skipped, final_dir)
        write_text_atomic(staging / PREPARED, json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    prepared = load_prepared(run_dir)
    write_text_atomic(
        run_dir / "dataset_info.json", json.dumps(prepared.dataset_info(), ensure_ascii=False, indent=2) + "\n"
    )
    sources = []
    for source in data_sources(scanner, tally):
        read, kept, rejected = tally.per_source[source.index]
        fmt = scanner.reports[source.index].format or "unknown format"
        sources.append(SourceCount(source.name, fmt, read, kept, rejected))
    lengths = _all_lengths(scanner, tally) if counter is not None else None
    return PrepareResult(info, tally, sources, lengths, 1 if info["kind"] == "pt" else scanner.length_every)


def data_sources(scanner: Scanner, tally: Tally) -> list[Source]:
    """The sources of the data, without data.replay's file."""
    return [s for s in scanner.sources if tally.replay is None or s.index != tally.replay.index]


def _check_whole(scanner: Scanner, source: Source) -> None:
    report = scanner.reports[source.index]
    if report.fatal:
        raise FtwError(
            f"{report.fatal}. Rows after it would be lost, so nothing was prepared: "
            "fix the file (ftw data check lists every problem) or write it as JSONL."
        )


def _write(
    scanner: Scanner, staging: Path, final_dir: Path, settings, pinned: frozenset[str], with_replay: bool
) -> tuple[Tally, dict, bool]:
    """Read every source into staging: the data's rows split into train and val (then the knowledge split
    when they carry `fact`), the replay file's kept rows aside until they are drawn into train.jsonl."""
    tally = Tally()
    if with_replay:
        last = scanner.sources[-1]
        tally.replay = ReplayTally(last.path, last.index)
    split = LanguageSplit(settings.val_ratio, settings.seed)
    writers = {name: JsonlWriter(staging / f"{name}.jsonl") for name in ("train", "val", "rejects")}
    replay_kept = JsonlWriter(staging / replay.KEPT)
    text_kind = False
    try:
        with byte_progress() as progress:
            task = progress.add_task("preparing", total=scanner.total_bytes())
            scanner.on_bytes = lambda n: progress.advance(task, n)
            for source in data_sources(scanner, tally):
                counts = tally.per_source.setdefault(source.index, [0, 0, 0])
                for batch in scanner.batches(source):
                    for item in batch:
                        tally.read += 1
                        counts[0] += 1
                        rejected = reject_reason(item, settings.dedupe)
                        if rejected and rejected[0] == BAD_GROUP:
                            refuse_bad_group(item)
                        if rejected:
                            kind, reason = rejected
                            writers["rejects"].write(reject_record(item, kind, reason))
                            tally.rejected += 1
                            counts[2] += 1
                            tally.reasons[kind] += 1
                            continue
                        is_text = item.row.text is not None
                        tally.row_kinds["text" if is_text else "conversation"] += 1
                        text_kind = text_kind or is_text
                        lang = item.lang or "unknown"
                        name = split.side(lang, item.row.chunk)
                        tally.facts += item.row.fact is not None
                        if item.row.chunk is not None:
                            chunk_tokens = knowledge.chunk_tokens_of(item.original, item.where)
                            if chunk_tokens is not None:
                                tally.chunk_tokens[item.row.chunk] = chunk_tokens
                        writers[name].write(output_row(item))
                        (tally.val_langs if name == "val" else tally.train_langs)[lang] += 1
                        tally.kept += 1
                        counts[1] += 1
                _check_whole(scanner, source)
            if tally.replay is not None:  # last: a row in both trains as the data's, the replay's is its duplicate
                _read_replay(scanner, scanner.sources[-1], tally, writers["rejects"], replay_kept, settings.dedupe)
    finally:
        for writer in (*writers.values(), replay_kept):
            writer.close()
    tally.train, tally.val = writers["train"].rows, writers["val"].rows
    outputs = {name: writer.record(final_dir) for name, writer in writers.items()}
    if tally.facts:
        _split_knowledge(scanner, tally, outputs, staging, final_dir, settings, pinned)
    elif not tally.val:
        (staging / "val.jsonl").unlink()
        outputs.pop("val")
    if tally.replay is not None:
        _mix_replay(tally, outputs, staging, final_dir, settings)
    else:
        replay_kept.path.unlink()
    return tally, outputs, text_kind


def _read_replay(scanner: Scanner, source: Source, tally: Tally, rejects: JsonlWriter, kept: JsonlWriter, dedupe: str):
    """The replay file's rows, each rejected (into rejects.jsonl, as the data's are) or kept aside in `kept`
    without fact or chunk: they are drawn into train.jsonl once the split is done (_mix_replay)."""
    general = tally.replay
    counts = tally.per_source.setdefault(source.index, [0, 0, 0])
    for batch in scanner.batches(source):
        for item in batch:
            general.read += 1
            counts[0] += 1
            rejected = reject_reason(item, dedupe)
            if rejected:  # a bad `fact` too: the row is dropped, not the data refused, since replay rows have none
                kind, reason = rejected
                rejects.write(reject_record(item, kind, reason))
                general.rejected += 1
                counts[2] += 1
                general.reasons[kind] += 1
                continue
            # raw text among conversations (or the reverse) is refused as it is between the data's files
            tally.row_kinds["text" if item.row.text is not None else "conversation"] += 1
            kept.write(replay.general_row(output_row(item)))
            general.tokens.append(item.tokens)
            general.kept += 1
            counts[1] += 1
    _check_whole(scanner, source)


def _mix_replay(tally: Tally, outputs: dict, staging: Path, final_dir: Path, settings) -> None:
    """Draw data.replay's rows into train.jsonl at random places (data/replay.py). Rows only go between
    rows, so the knowledge split's `spacing` between two rows of one fact stays a floor."""
    writer = replay.mix(
        staging,
        tally.replay,
        settings.replay_share,
        settings.seed,
        tally.train,
        lambda name: JsonlWriter(staging / f"{name}.jsonl"),
    )
    outputs["train"] = writer.record(final_dir)
    tally.train = writer.rows
    tally.train_langs.update(tally.replay.langs)


def _split_knowledge(
    scanner: Scanner, tally: Tally, outputs: dict, staging: Path, final_dir: Path, settings, pinned: frozenset[str]
) -> None:
    """Rows carry `fact`: train, probes and unseen replace train and val (data/knowledge.py); the questions
    the recipe's checks ask (`pinned`) train."""
    split = knowledge.split(
        staging,
        settings,
        scanner.counter,
        tally.chunk_tokens,
        lambda name: JsonlWriter(staging / f"{name}.jsonl"),
        pinned,
    )
    del outputs["train"], outputs["val"]
    outputs.update({name: writer.record(final_dir) for name, writer in split.outputs.items()})
    tally.train, tally.val = outputs["train"]["rows"], 0
    tally.probes = outputs["probes"]["rows"] if "probes" in outputs else 0
    tally.unseen = outputs["unseen"]["rows"] if "unseen" in outputs else 0
    tally.train_langs, tally.val_langs = split.langs["train"], Counter()
    tally.held_langs = {name: split.langs[name] for name in ("probes", "unseen") if name in split.langs}
    tally.knowledge = split.info


def _check_invariant(scanner: Scanner, tally: Tally) -> None:
    general = tally.replay or ReplayTally(Path(), -1)
    read = sum(report.read for report in scanner.reports) - general.read
    held = tally.probes + tally.unseen
    trained = tally.train - general.drawn  # the data's rows in train.jsonl
    if not (read == tally.read == tally.kept + tally.rejected and tally.kept == trained + tally.val + held):
        raise FtwError(
            f"internal error: rows read {read} / {tally.read} != kept {tally.kept} (train {trained} "
            f"+ val {tally.val} + probes {tally.probes} + unseen {tally.unseen}) + rejected {tally.rejected}; "
            "nothing was prepared"
        )
    if not (general.read == general.kept + general.rejected and general.drawn <= general.kept):
        raise FtwError(
            f"internal error: replay rows read {general.read} != kept {general.kept} + rejected "
            f"{general.rejected}, or drawn {general.drawn} > kept; nothing was prepared"
        )
    for index, (read_here, kept, rejected) in tally.per_source.items():
        if read_here != kept + rejected or read_here != scanner.reports[index].read:
            raise FtwError(
                f"internal error: {scanner.sources[index].name}: read {read_here} != kept {kept} "
                f"+ rejected {rejected}; nothing was prepared"
            )


def _prepared_info(
    recipe: Recipe,
    scanner: Scanner,
    tally: Tally,
    outputs: dict,
    kind: str,
    counter,
    cutoff_len: int,
    skipped: list[Path],
    final_dir: Path,
) -> dict:
    lengths = None
    if counter is not None:
        total = _all_lengths(scanner, tally)
        lengths = {
            **total.summary(),
            "cutoff_len": cutoff_len,
            "truncated": total.longer_than(cutoff_len),
            "counted_as": counter.description,
            "sampled_1_in": 1 if kind == "pt" else scanner.length_every,
        }
    sources = []
    for source in data_sources(scanner, tally):
        report = scanner.reports[source.index]
        read, kept, rejected = tally.per_source[source.index]
        stat = source.path.stat()
        sources.append(
            {
                "path": str(source.path),
                "format": report.format,
                "sha256": report.sha256,
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "read": read,
                "kept": kept,
                "rejected": rejected,
            }
        )
    return {
        "kind": kind,
        "format": "text" if kind == "pt" else "sharegpt",
        "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe.name,
        "recipe_file": str(recipe.doc.path),
        "settings": {**asdict(recipe.data), "cutoff_len": cutoff_len},
        "counts": {
            "read": tally.read,
            "kept": tally.kept,
            "rejected": tally.rejected,
            "train": tally.train,
            "val": tally.val,
            "probes": tally.probes,
            "unseen": tally.unseen,
            "replay": tally.replay.drawn if tally.replay else 0,  # of train: data.replay's general rows
            "rejected_by_kind": dict(tally.reasons),
        },
        "split": {
            "train": dict(tally.train_langs),
            "val": dict(tally.val_langs),
            **{name: dict(langs) for name, langs in tally.held_langs.items()},
        },
        "knowledge": tally.knowledge,  # rows carry `fact`: facts, phrasings, probes, unseen chunks (knowledge.py)
        "replay": (
            tally.replay.info(recipe.data.replay_share, scanner.reports[tally.replay.index].sha256)
            if tally.replay
            else None
        ),
        "lengths": lengths,
        "files": outputs,
        "sources": sources,
        "skipped_files": [str(p) for p in skipped],
    }


def _all_lengths(scanner: Scanner, tally: Tally) -> Lengths:
    """The token lengths of the rows that train or are held out: the data's, and the replay rows drawn."""
    total = Lengths.empty()
    for source in data_sources(scanner, tally):
        total.merge(scanner.reports[source.index].lengths)
    if tally.replay is not None:
        total.merge(tally.replay.lengths)
    return total
