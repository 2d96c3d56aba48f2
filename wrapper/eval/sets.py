"""The prompt sets `ftw eval` answers: the recipe's control and general-knowledge prompts,
and the run's validation rows (or a seeded sample of its training rows)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wrapper.config.schema import EvalSettings
from wrapper.core import manifest
from wrapper.core.errors import FtwError
from wrapper.core.eval_result import GGUF, quant_of
from wrapper.core.gguf_io import DEFAULT_QUANT
from wrapper.core.plan import RunPlan
from wrapper.core.ui import step
from wrapper.data.samples import conversations

# The run's LoRA as a GGUF adapter on its base GGUF (ftw adapter): scored when the run has the pair.
ADAPTER_MODEL = "lora"


def row_model(kind: str) -> str:
    """The model part of a scored row's key. The default quantization's GGUF keeps "gguf", the key it had
    when it was the only one scored, so that rows.jsonl written then is resumed, not answered again."""
    quant = quant_of(kind)
    if quant is None:
        return kind
    return GGUF if quant == DEFAULT_QUANT else f"{GGUF}-{quant}"


# The metrics the tables show (terminal, report.md, report.html), in this order.
TABLE_METRICS = ("contains", "exact_match", "token_f1", "rouge_l", "key_info_recall", "length_ratio")


@dataclass
class Item:
    """One prompt to answer: the conversation before the answer, and the reference answer."""

    set: str
    id: str
    messages: list[dict]  # user/assistant turns, the user's last
    reference: str
    expect: str | None = None  # a phrase the answer must contain (general set, optional elsewhere)
    system: str | None = None
    lang: str | None = None
    fact: str | None = None  # the knowledge sets: the fact the question asks about (not part of the key)
    document: str | None = None  # and the document it was written from
    chunk: str | None = None  # and the chunk of it

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]

    def key(self, model: str, max_new_tokens: int) -> str:
        what = json.dumps([self.messages, self.system, self.reference, self.expect, max_new_tokens], ensure_ascii=False)
        return f"{model}|{self.set}|{self.id}|{hashlib.sha1(what.encode()).hexdigest()[:12]}"


@dataclass
class EvalSets:
    items: dict[str, list[Item]] = field(default_factory=dict)
    sources: dict[str, dict] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# the sets


def plan_eval(plan: RunPlan) -> dict[str, Any]:
    """The eval settings render kept in the run's plan (never the recipe: a run is what it was rendered with)."""
    if plan.eval is not None:
        return dict(plan.eval)
    step(
        f"[yellow]note[/yellow]: run {plan.run} was rendered before ftw kept the eval settings in its plan, so it has "
        f"no control or general prompts here. To use {plan.recipe_file}'s: ftw render --recipe {plan.recipe_file} "
        f"--profile {plan.profile} --run {plan.run}"
    )
    return asdict(EvalSettings())


def read_prompt_file(path: Path, set_name: str) -> list[Item]:
    """A JSONL of {"id"?, "prompt", "reference", "expect"?, "lang"?} rows (general: "expect" required)."""
    if not path.is_file():
        raise FtwError(f"eval prompts file not found: {path}")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FtwError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not (
            isinstance(row, dict)
            and isinstance(row.get("prompt"), str)
            and isinstance(row.get("reference", row.get("expect")), str)
        ):
            raise FtwError(f"{path}:{number}: each row needs 'prompt' and 'reference' strings")
        if set_name == "general" and not isinstance(row.get("expect"), str):
            raise FtwError(f"{path}:{number}: a general-knowledge row needs 'expect', the fact its answer must contain")
        items.append(
            Item(
                set_name,
                str(row.get("id", number)),
                [{"role": "user", "content": row["prompt"]}],
                row.get("reference") or row["expect"],
                row.get("expect"),
                row.get("system"),
                row.get("lang"),
            )
        )
    return items


def conversation_rows(path: Path) -> list[tuple[list[dict], str, str | None, str | None]]:
    """(messages before the last answer, that answer, system, lang) of each conversation row of a file."""
    rows = []
    for row in conversations(path):
        turns = row.turns
        if len(turns) >= 2 and turns[-1]["role"] == "assistant" and turns[-2]["role"] == "user":
            rows.append((turns[:-1], turns[-1]["content"], row.system, row.lang))
    return rows


def load_sets(run_dir: Path, settings: dict[str, Any]) -> EvalSets:
    plan = manifest.plan_of(run_dir)
    sets = EvalSets()
    for name in ("control", "general"):
        if settings.get(name):
            path = Path(settings[name])
            sets.items[name] = read_prompt_file(path.resolve(), name)
            sets.sources[name] = {"file": str(path.resolve()), "rows": len(sets.items[name])}
        else:
            sets.items[name] = []
            sets.sources[name] = {"file": None, "rows": 0}

    prepared = run_dir / "data" / "val.jsonl"
    if prepared.is_file() and prepared.stat().st_size:
        rows, source, seen = conversation_rows(prepared), str(prepared), False
    else:
        rows, seen = [], True
        for dataset in plan.datasets:
            rows += conversation_rows(Path(dataset["path"]))
        source = ", ".join(str(d["path"]) for d in plan.datasets)
    sample = int(settings["val_sample"])
    picked = sorted(random.Random(settings["seed"]).sample(range(len(rows)), min(sample, len(rows)))) if sample else []
    sets.items["val"] = [
        Item("val", f"row{index}", messages, answer, None, system, lang)
        for index in picked
        for messages, answer, system, lang in [rows[index]]
    ]
    sets.sources["val"] = {
        "file": source,
        "rows": len(sets.items["val"]),
        "of": len(rows),
        "seen_in_training": seen,
        "seed": settings["seed"],
        "note": (
            "a seeded sample of the training rows (no validation split: run `ftw data "
            "prepare`); it measures memorisation, not generalisation"
        )
        if seen
        else "held-out validation split from `ftw data prepare`",
    }
    return sets
