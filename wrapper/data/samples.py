"""The run's own rows as text in the training format, for llama.cpp's tools: calibration text for
an importance matrix (training rows) and the text quantization loss is measured on (validation rows).

A seeded sample of whole rows, in a seeded order, capped by tokens counted with the run's
tokenizer; the text is what LLaMA-Factory's template lays out for training (markers, system
prompt, every turn and its end-of-turn token), so a quantizer calibrated on it sees what the
model will see.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from wrapper.core.errors import FtwError
from wrapper.core.plan import RunPlan
from wrapper.data.formats import ASSISTANT, USER, detect_format, parse_row
from wrapper.data.readers import read_json_records
from wrapper.prompts.training_format import TrainingFormat

VAL_FILE = Path("data") / "val.jsonl"


@dataclass(frozen=True)
class Conversation:
    """One row as the evaluation and the tools read it: turns (user first), its system prompt, language."""

    turns: list[dict]
    system: str | None
    lang: str | None


@dataclass(frozen=True)
class SampleText:
    text: str
    rows: int  # rows in the text
    of: int  # rows there were to sample from
    tokens: int
    sha256: str
    source: str
    seed: int
    seen_in_training: bool

    def describe(self) -> dict:
        return {key: getattr(self, key) for key in ("rows", "of", "tokens", "sha256", "source", "seed")} | {
            "seen_in_training": self.seen_in_training
        }


def conversations(path: Path) -> list[Conversation]:
    """The conversation rows of a dataset file (user/assistant turns, user first); others are skipped."""
    found = []
    for record in read_json_records(path):
        if record.problem is not None:
            continue
        fmt = detect_format(record.value)
        if fmt in (None, "text", "mapped"):
            continue
        try:
            row = parse_row(record.value, fmt)
        except Exception:  # noqa: BLE001 - `ftw data check` reports bad rows; these readers skip them
            continue
        turns = [
            {"role": "user" if role == USER else "assistant", "content": content}
            for role, content in row.turns
            if role in (USER, ASSISTANT)
        ]
        if turns and turns[0]["role"] == "user" and any(t["role"] == "assistant" for t in turns):
            found.append(Conversation(turns, row.system, row.lang))
    return found


def training_text(fmt: TrainingFormat, conversation: Conversation) -> str:
    """The whole conversation as LLaMA-Factory lays it out for training, every answer with its end token."""
    turns = conversation.turns if conversation.turns[-1]["role"] == "assistant" else conversation.turns[:-1]
    if not turns:
        return ""
    return fmt.render_text(turns, conversation.system)


def run_rows(run_dir: Path, plan: RunPlan, split: str) -> tuple[list[Conversation], str, bool]:
    """(rows, where from, seen in training) of the run's training rows, or of its validation split
    (the training rows where `ftw data prepare` made none)."""
    val = run_dir / VAL_FILE
    if split == "val" and val.is_file() and val.stat().st_size:
        return conversations(val), str(val), False
    rows = [row for dataset in plan.datasets for row in conversations(Path(dataset["path"]))]
    return rows, ", ".join(str(d["path"]) for d in plan.datasets), True


def sample_text(
    run_dir: Path, plan: RunPlan, fmt: TrainingFormat, split: str, max_tokens: int, seed: int, min_tokens: int = 0
) -> SampleText:
    """Whole rows in a seeded order until `max_tokens`; refuses fewer than `min_tokens` (the tools need
    two contexts' worth) with what to do."""
    rows, source, seen = run_rows(run_dir, plan, split)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    pieces, tokens = [], 0
    for index in order:
        text = training_text(fmt, rows[index])
        count = fmt.count(text) if text else 0
        if not count:
            continue
        if pieces and tokens + count > max_tokens:
            break
        pieces.append(text)
        tokens += count
    if tokens < min_tokens:
        raise FtwError(
            f"the run's {'validation' if split == 'val' else 'training'} rows ({source}) hold {tokens} tokens in the "
            f"training format; llama.cpp needs at least {min_tokens} here"
        )
    text = "".join(pieces)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return SampleText(text, len(pieces), len(rows), tokens, digest, source, seed, seen)
