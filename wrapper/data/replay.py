"""`data.replay`: general rows mixed into train.jsonl against forgetting (docs/data.md#will-my-model-know-my-documents).

A model fine-tuned on one's documents alone wears away some of what the base knew; mixing general rows in
keeps it (EntiGraph, arXiv 2409.07431, replays 10% general text: RedPajama at `--rr 0.1`; Pletenev et al.,
arXiv 2502.14502: known and new facts mixed do best). The replay file is read as one more source of the same
Scanner as the data, so its rows pass the same readers and checks, and one that repeats a row of the data is
its duplicate. Its kept rows wait in the staging folder until the split has decided how many rows of the data
train (N); then n = round(share / (1 - share) * N) of them are drawn (seeded, without replacement; all of them
when there are fewer) and put at random places in train.jsonl, so that they make `share` of its rows. They are
never validation rows, probes or unseen rows, and carry no `fact` or `chunk`.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.config.schema import Recipe
from wrapper.core.errors import FtwError
from wrapper.core.paths import display_path
from wrapper.data.tokens import Lengths

KEPT = "replay.kept"  # the replay file's kept rows, in the staging folder until they are drawn
NOT_CARRIED = ("fact", "chunk", "document")  # a replay row is general: no fact to probe, no chunk to hold out


@dataclass
class ReplayTally:
    """The replay file's rows: read = kept + rejected; `drawn` of the kept train."""

    path: Path
    index: int  # its source index in the Scanner: the last one
    read: int = 0
    kept: int = 0
    rejected: int = 0
    asked: int = 0  # round(share / (1 - share) * the data's trained rows)
    drawn: int = 0
    reasons: Counter = field(default_factory=Counter)
    langs: Counter = field(default_factory=Counter)  # of the drawn rows
    tokens: list[int | None] = field(default_factory=list)  # of each kept row, where the Scanner counted them
    lengths: Lengths = field(default_factory=Lengths.empty)  # of the drawn rows: the ones that train

    def info(self, share: float, sha256: str) -> dict[str, Any]:
        """What prepared.json records (`replay`); bytes and mtime_ns tell `ftw render` when it changed."""
        stat = self.path.stat()
        return {
            "path": str(self.path),
            "sha256": sha256,
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "share": share,
            "read": self.read,
            "kept": self.kept,  # the rows available to draw
            "rejected": self.rejected,
            "asked": self.asked,
            "drawn": self.drawn,
            "rejected_by_kind": dict(self.reasons),
        }


def replay_file(recipe: Recipe) -> Path | None:
    """The recipe's `data.replay` file (relative to the recipe), or None; a missing one is an error."""
    if recipe.data.replay is None:
        return None
    path = (recipe.folder / Path(recipe.data.replay).expanduser()).resolve()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise FtwError(
            f"{recipe.origin('data.replay')}: the replay file {display_path(path)} {what}. Nothing was prepared. "
            "Give a file of general rows (Alpaca, ShareGPT or messages JSON/JSONL; a relative path is relative "
            "to the recipe) or remove data.replay, then run `ftw data prepare` again"
        )
    return path


def general_row(out: dict) -> dict:
    """A kept replay row as train.jsonl holds it: without fact or chunk, whatever the file said."""
    for key in NOT_CARRIED:
        out.pop(key, None)
    return out


def asked_rows(share: float, trained: int) -> int:
    """The rows to draw so that they make `share` of the trained rows with them (half up)."""
    return math.floor(share / (1 - share) * trained + 0.5)


def mix(staging: Path, tally: ReplayTally, share: float, seed: int, trained: int, make_writer):
    """Rewrite staging/train.jsonl (`trained` rows of the data) with the drawn replay rows at random places;
    return its closed writer. make_writer(name) opens the JSONL writer of staging/NAME.jsonl."""
    kept_file = staging / KEPT
    tally.asked = asked_rows(share, trained)
    tally.drawn = min(tally.asked, tally.kept)
    rng = random.Random(f"{seed}:replay")
    chosen = set(rng.sample(range(tally.kept), tally.drawn))
    for number in chosen:
        if tally.tokens[number] is not None:
            tally.lengths.add(tally.tokens[number])
    with kept_file.open("rb") as handle:
        drawn = [json.loads(line) for number, line in enumerate(handle) if number in chosen]
    kept_file.unlink()
    rng.shuffle(drawn)
    places = set(rng.sample(range(trained + len(drawn)), len(drawn)))
    before = staging / "train.jsonl"
    before = before.rename(before.with_name("train.before"))
    writer = make_writer("train")
    rows = iter(drawn)
    try:
        with before.open("rb") as handle:
            for place in range(trained + len(drawn)):
                if place in places:
                    row = next(rows)
                    tally.langs[row.get("lang") or "unknown"] += 1
                    writer.write(row)
                else:
                    writer.write(json.loads(handle.readline()))
    finally:
        writer.close()
    before.unlink()
    return writer


def summary_line(info: dict) -> str:
    """What `ftw data prepare` prints of the replay file."""
    name = display_path(Path(info["path"]))
    reasons = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in info["rejected_by_kind"].items())
    line = (
        f"replay {name}: read {info['read']}, kept {info['kept']}, rejected {info['rejected']}"
        + (f" ({reasons})" if reasons else "")
        + f"; drew {info['drawn']} into train.jsonl at random places (share {info['share']:g})"
    )
    if info["drawn"] < info["asked"]:
        line += f"; the share asked for {info['asked']}, the file has only {info['kept']}: all of them train"
    return line
