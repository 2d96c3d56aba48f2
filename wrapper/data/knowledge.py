"""The knowledge split of `ftw data prepare`, for rows that carry `fact` (docs/data.md#facts).

A fact is what several rows phrase differently (their `fact` key); a chunk is the piece of a
document rows were written from (their `chunk` key). When any row names a fact, the rows the
ordinary split wrote (train.jsonl and val.jsonl in the staging folder) are split again:

  unseen.jsonl   data.unseen_share of the chunks held out whole: their questions, their text,
                 their rewrites. Asked after training, they measure what the model makes up
                 about text it never read.
  probes.jsonl   data.probes_per_fact phrasings of every other fact: questions never trained,
                 about facts that were. LLaMA-Factory's validation loss is computed on them.
  train.jsonl    everything else, laid out so that the rows of one fact are far apart.

A chunk is the unit held out: a fact without a chunk is its own unit, and chunks that share a
fact are one unit (else a phrasing of an unseen fact would train). The rows of a chunk without a
`fact` are its document rows (its text, rewrites of it); rows with neither key train. A row that
asks what one of the recipe's checks asks trains, and its unit is never held out: `ftw smoke`
expects the GGUF to know it.

Why the layout: paraphrases of one fact that sit in one training sequence let the model copy the
answer from the neighbouring row instead of storing it (github.com/ykrmm/PhysicsLLM_3.1: 7% -> 97%
on held-out questions once the rewrites were shuffled apart). LLaMA-Factory's packing
(processor/supervised.py: PackedSupervisedDatasetProcessor) fills sequences from each
preprocessing batch of `preprocessing_batch_size` consecutive rows, sorted by length, so order
within a batch keeps nothing apart; two rows further apart than the batch never meet. So the rows
of a fact are spread evenly over the file, the least distance between two of them is recorded
(`spacing`), and render caps preprocessing_batch_size at it when packing is on (prepared.py).
Without packing every row is its own sequence.

Memory: a few numbers per kept row while splitting (the rows themselves are re-read by offset).
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.config.schema import DataSettings
from wrapper.core.errors import FtwError
from wrapper.data.formats import near_key, parse_row
from wrapper.data.tokens import TokenCounter

NO_FACT = -1
COUNT_BATCH = 2048


def chunk_tokens_of(original: Any, where: str) -> int | None:
    """A row's `chunk_tokens` (the length of its chunk's text, as `ftw data synth` counted it), or None."""
    value = original.get("chunk_tokens") if isinstance(original, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FtwError(
            f"{where}: field 'chunk_tokens' must be a whole number of tokens >= 0, found {value!r}; "
            "nothing was prepared. Fix the row or remove the key, then run `ftw data prepare` again"
        )
    return value


@dataclass
class Stored:
    """Where a kept row is in the staging files, and what the split needs of it."""

    file: Path
    offset: int
    length: int
    fact: int  # index into the facts, or NO_FACT
    chunk: str | None
    unit: str | None  # the chunk (or chunks joined by a fact, or a fact without one); None: neither key
    lang: str
    pinned: bool = False  # its question is one the recipe's checks ask: it trains, and so does its unit


class StoredReader:
    """Rows read back by offset, each staging file opened once."""

    def __init__(self, rows: list[Stored]):
        self.rows = rows
        self.handles: dict[Path, Any] = {}

    def __enter__(self) -> StoredReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles.values():
            handle.close()

    def read(self, index: int) -> dict:
        row = self.rows[index]
        handle = self.handles.get(row.file) or self.handles.setdefault(row.file, row.file.open("rb"))
        handle.seek(row.offset)
        return json.loads(handle.read(row.length))


@dataclass
class KnowledgeSplit:
    """What the knowledge split wrote, for prepared.json and the summary."""

    outputs: dict[str, dict] = field(default_factory=dict)  # name -> JsonlWriter.record()
    langs: dict[str, Counter] = field(default_factory=dict)  # name -> rows per language
    info: dict[str, Any] = field(default_factory=dict)


class Units:
    """Chunks joined by the facts they share (union-find over ("chunk", id) and ("fact", id))."""

    def __init__(self) -> None:
        self.parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(self, key: tuple[str, str]) -> tuple[str, str]:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def join(self, keys: list[tuple[str, str]]) -> None:
        roots = sorted({self.find(k) for k in keys})  # the smallest key names the unit: stable across runs
        for root in roots[1:]:
            self.parent[root] = roots[0]

    def name(self, key: tuple[str, str]) -> str:
        kind, value = self.find(key)
        return f"{kind}:{value}"


def _first_question(row: dict) -> str | None:
    for turn in row.get("conversations") or []:
        if turn.get("from") == "human":
            return turn.get("value")
    return None


def _read_stored(files: list[Path], pinned: frozenset[str]) -> tuple[list[Stored], list[str]]:
    facts: dict[str, int] = {}
    units = Units()
    rows: list[tuple[Path, int, int, str | None, str | None, str, bool]] = []
    for path in files:
        offset = 0
        with path.open("rb") as handle:
            for line in handle:
                row = json.loads(line)
                fact, chunk = row.get("fact"), row.get("chunk")
                keys = [(kind, value) for kind, value in (("chunk", chunk), ("fact", fact)) if value is not None]
                if keys:
                    units.join(keys)
                if fact is not None:
                    facts.setdefault(fact, len(facts))
                question = _first_question(row)
                is_pinned = question is not None and near_key(question) in pinned
                rows.append((path, offset, len(line), fact, chunk, row.get("lang") or "unknown", is_pinned))
                offset += len(line)
    stored = [
        Stored(
            path,
            offset,
            length,
            facts[fact] if fact is not None else NO_FACT,
            chunk,
            None if fact is None and chunk is None else units.name(("chunk", chunk) if chunk else ("fact", fact)),
            lang,
            is_pinned,
        )
        for path, offset, length, fact, chunk, lang, is_pinned in rows
    ]
    return stored, list(facts)


def spread(facts: list[int], rng: random.Random) -> tuple[list[int], int | None, int]:
    """An order of the rows (their indices) in which the rows of each fact are evenly spaced: row j of a
    fact's k rows goes near (j + u) / k of the way through the file (u random per fact); rows without a
    fact fall at random places. Then no two rows of a fact are left next to each other where another
    row can go between. Returns (order, the least distance between two rows of one fact or None when no
    fact has two, the pairs still next to each other: only where one fact holds over half the rows)."""
    groups: dict[int, list[int]] = defaultdict(list)
    places: list[tuple[float, float, int]] = []
    for index, fact in enumerate(facts):
        if fact == NO_FACT:
            places.append((rng.random(), rng.random(), index))
        else:
            groups[fact].append(index)
    for fact in sorted(groups):
        members = groups[fact]
        rng.shuffle(members)
        start = rng.random()
        places += [((j + start) / len(members), rng.random(), index) for j, index in enumerate(members)]
    order = [index for _, _, index in sorted(places)]
    adjacent = _part_neighbours(order, facts)
    return order, _spacing(order, facts), adjacent


def _part_neighbours(order: list[int], facts: list[int]) -> int:
    """Move a row of another fact between any two neighbours of one fact; the pairs left over."""
    left = 0
    position = 1
    while position < len(order):
        fact = facts[order[position]]
        if fact != NO_FACT and fact == facts[order[position - 1]]:
            other = next((j for j in range(position + 1, len(order)) if facts[order[j]] != fact), None)
            if other is None:
                left += 1
            else:
                order.insert(position, order.pop(other))
        position += 1
    return left


def _spacing(order: list[int], facts: list[int]) -> int | None:
    last: dict[int, int] = {}
    least = None
    for position, index in enumerate(order):
        fact = facts[index]
        if fact == NO_FACT:
            continue
        if fact in last:
            gap = position - last[fact]
            least = gap if least is None else min(least, gap)
        last[fact] = position
    return least


def _unseen_units(units: list[str], share: float, rng: random.Random, pinned: set[str]) -> set[str]:
    """The nearest whole number of units to `share` of them (never all), chosen at random among those
    without a pinned row."""
    free = [unit for unit in units if unit not in pinned]
    count = min(int(share * len(units) + 0.5), len(units) - 1, len(free))
    return set(rng.sample(free, count)) if count > 0 else set()


def _copy(rows: list[Stored], order: list[int], writer) -> Counter:
    langs: Counter = Counter()
    with StoredReader(rows) as reader:
        for index in order:
            writer.write(reader.read(index))
            langs[rows[index].lang] += 1
    return langs


def _tokens(rows: list[Stored], indices: list[int], counter: TokenCounter) -> int:
    total = 0
    with StoredReader(rows) as reader:
        for start in range(0, len(indices), COUNT_BATCH):
            parsed = [parse_row(reader.read(i), "sharegpt") for i in indices[start : start + COUNT_BATCH]]
            total += sum(counter.count_rows(parsed))
    return total


def split(
    staging: Path,
    settings: DataSettings,
    counter: TokenCounter | None,
    chunk_tokens: dict[str, int],
    make_writer,
    pinned: frozenset[str] = frozenset(),
) -> KnowledgeSplit:
    """Split the rows of staging/train.jsonl and val.jsonl into train, probes and unseen (see the module's
    docstring); make_writer(name) opens the JSONL writer of staging/NAME.jsonl. A row whose question is in
    `pinned` (near_key of the recipe's checks' prompts: `ftw smoke` asks them of the GGUF) trains, and its
    chunk is never held out."""
    before = [staging / f"{name}.jsonl" for name in ("train", "val") if (staging / f"{name}.jsonl").is_file()]
    moved = []
    for path in before:  # the new train.jsonl is written while the old one is read
        moved.append(path.rename(path.with_name(f"{path.stem}.before")))
    rows, fact_names = _read_stored(moved, pinned)
    rng = random.Random(f"{settings.seed}:knowledge")
    units = sorted({row.unit for row in rows if row.unit is not None})
    pinned_units = {row.unit for row in rows if row.pinned and row.unit is not None}
    unseen_units = _unseen_units(units, settings.unseen_share, rng, pinned_units)
    unseen = [i for i, row in enumerate(rows) if row.unit in unseen_units]
    phrasings: dict[int, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        if row.fact != NO_FACT and row.unit not in unseen_units and not row.pinned:
            phrasings[row.fact].append(index)
    probes: list[int] = []
    probed = 0
    pinned_facts = {row.fact for row in rows if row.pinned and row.fact != NO_FACT}
    for fact in sorted(phrasings):  # a fact keeps at least one phrasing in training (a pinned one counts)
        if settings.probes_per_fact and len(phrasings[fact]) + (fact in pinned_facts) > settings.probes_per_fact:
            probes += rng.sample(phrasings[fact], settings.probes_per_fact)
            probed += 1
    held = set(unseen) | set(probes)
    train = [i for i in range(len(rows)) if i not in held]
    train_order, train_spacing, train_adjacent = spread([rows[i].fact for i in train], rng)
    probe_order, probe_spacing, _ = spread([rows[i].fact for i in probes], rng)

    result = KnowledgeSplit()
    for name, indices, order in (
        ("train", train, train_order),
        ("probes", probes, probe_order),
        ("unseen", unseen, range(len(unseen))),
    ):
        if not indices and name != "train":
            continue
        writer = make_writer(name)
        try:
            result.langs[name] = _copy(rows, [indices[i] for i in order], writer)
        finally:
            writer.close()
        result.outputs[name] = writer
    trained_per_fact = Counter(rows[i].fact for i in train if rows[i].fact != NO_FACT)
    per_fact = sorted(trained_per_fact.values())
    spacings = [s for s in (train_spacing, probe_spacing) if s is not None]
    result.info = {
        "facts": len(fact_names),
        "facts_trained": len(per_fact),
        "trained_phrasings_per_fact": {"min": per_fact[0], "median": statistics.median(per_fact)} if per_fact else None,
        "probes": len(probes),
        "facts_probed": probed,
        "facts_not_probed": len(phrasings) - probed,
        "chunks": len({row.chunk for row in rows if row.chunk is not None}),
        "unseen_chunks": len({rows[i].chunk for i in unseen if rows[i].chunk is not None}),
        "units": len(units),  # what is held out whole: a chunk, chunks that share a fact, a fact without a chunk
        "unseen_units": len(unseen_units),
        "unseen_facts": len({rows[i].fact for i in unseen if rows[i].fact != NO_FACT}),
        "unseen_rows": len(unseen),
        "pinned_rows": sum(1 for row in rows if row.pinned),  # asked by the recipe's checks: trained
        "document_rows": sum(1 for i in train if rows[i].fact == NO_FACT and rows[i].unit is not None),
        "other_rows": sum(1 for i in train if rows[i].unit is None),
        # the least distance, in rows, between two rows of one fact in train.jsonl and probes.jsonl:
        # render keeps LLaMA-Factory's preprocessing batches (what packing fills sequences from) shorter
        "spacing": min(spacings) if spacings else None,
        "neighbours_of_one_fact": train_adjacent,
        **_token_ratio(rows, train, counter, chunk_tokens),
    }
    for path in moved:
        path.unlink()
    return result


def _token_ratio(rows: list[Stored], train: list[int], counter: TokenCounter | None, chunk_tokens: dict) -> dict:
    """Tokens of the trained rows written from chunks (questions and document rows) over the tokens of those
    chunks' own text (`chunk_tokens`, which `ftw data synth` writes on each row): how much synthetic text
    each source token became (EntiGraph, arXiv 2409.07431: 455M synthetic from 1.3M source tokens)."""
    from_chunks = [i for i in train if rows[i].chunk is not None]
    chunks = {rows[i].chunk for i in from_chunks}
    # a chunk whose length no row gives leaves the source unknown: a partial sum would overstate the ratio
    source = sum(chunk_tokens[c] for c in chunks) if chunks and chunks <= chunk_tokens.keys() else None
    synthetic = _tokens(rows, from_chunks, counter) if counter is not None and from_chunks else None
    ratio = round(synthetic / source, 2) if synthetic is not None and source else None
    return {"synthetic_tokens": synthetic, "source_tokens": source, "synthetic_to_source": ratio}


def summary_lines(info: dict, counts: dict, settings: dict, langs) -> list[str]:
    """What `ftw data prepare` prints of the knowledge split; langs(counter) words the rows per language."""
    per_fact = info["trained_phrasings_per_fact"]
    lines = [
        f"knowledge split (seed {settings['seed']}, probes_per_fact {settings['probes_per_fact']}, unseen_share "
        f"{settings['unseen_share']}; val_ratio is not used, the probes are the validation set): "
        f"train {counts['train']} ({langs['train']}), probes {counts['probes']}, unseen {counts['unseen']}",
        f"facts: {info['facts']}; {info['facts_trained']} trained"
        + (f" with {per_fact['min']} to median {per_fact['median']:g} phrasings each" if per_fact else "")
        + f"; {info['facts_probed']} probed, {info['facts_not_probed']} not probed (too few phrasings to spare)",
        f"unseen: {info['unseen_units']} of {info['units']} chunk(s) (or facts of no chunk) held out whole "
        f"({info['unseen_chunks']} chunk(s), {info['unseen_facts']} fact(s), {info['unseen_rows']} row(s)); "
        "trained document rows "
        f"{info['document_rows']}, rows of no fact or chunk {info['other_rows']}",
    ]
    if info.get("pinned_rows"):
        lines.append(
            f"{info['pinned_rows']} row(s) ask what the recipe's checks ask: trained, never probes or unseen "
            "(`ftw smoke` asks them of the GGUF)"
        )
    ratio = info["synthetic_to_source"]
    lines.append(
        f"synthetic/source tokens: {ratio:g} ({info['synthetic_tokens']:,} / {info['source_tokens']:,})"
        if ratio is not None
        else "synthetic/source tokens: unknown (needs each chunk's chunk_tokens, as `ftw data synth` writes them)"
    )
    if info["neighbours_of_one_fact"]:
        lines.append(
            f"note: {info['neighbours_of_one_fact']} pair(s) of rows of one fact are next to each other in "
            "train.jsonl: that fact holds over half the rows"
        )
    return lines
