"""runs/RUN/eval.json, typed: what `ftw eval` measured, as the report, the model card and a comparison of
runs read it. An eval.json written by an earlier ftw loads with the sections it lacks left empty.

The models (columns) are named by kind: `base` (the model the run trained from), `merged` (the merged
HF weights), `gguf:Q4_K_M`, `gguf:Q8_0`, ... (each quantized GGUF scored: `gguf_quants`), `lora` (the base
GGUF with the LoRA adapter GGUF, when the run has the pair). An eval.json from before every quantized GGUF
was scored has one, of kind `gguf` and named by `gguf_quant`: it is read in today's form (`upgraded`).

`knowledge` ("does it know the documents?") is there when the run's prepared data has facts
(probes.jsonl, unseen.jsonl: docs/data.md#facts); an eval.json without it loads with None.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.gguf_io import DEFAULT_QUANT

EVAL_JSON = "eval.json"
MODEL_KINDS = ("base", "merged", "gguf", "lora")  # the columns' order; "gguf" stands for each gguf:QUANT
GGUF = "gguf"
SETS = ("control", "val", "general")
TITLES = {"base": "base", "merged": "merged HF", "lora": "base+LoRA GGUF"}
# The knowledge sets, in the tables' order: trained questions (a sanity check), held-out phrasings of trained
# facts (the headline), questions about chunks never trained (what the tune makes up).
KNOWLEDGE_SETS = ("seen", "probes", "unseen")


def gguf_kind(quant: str) -> str:
    """The kind of a quantized GGUF of the run: gguf:Q4_K_M."""
    return f"{GGUF}:{quant}"


def quant_of(kind: str) -> str | None:
    """The quantization of a gguf:QUANT kind; None for the other kinds."""
    family, _, quant = kind.partition(":")
    return quant if family == GGUF and quant else None


def model_title(kind: str) -> str:
    """A model's column title; a quantized GGUF's names its quantization."""
    quant = quant_of(kind)
    return f"{quant} GGUF" if quant else TITLES[kind]


def main_quant(quants: list[str]) -> str:
    """The quantized GGUF a single number stands for (a comparison of runs, the adapter beside the merged
    file): the default quantization when it was scored, else the first."""
    return DEFAULT_QUANT if DEFAULT_QUANT in quants else quants[0]


def column_order(kind: str) -> int:
    return MODEL_KINDS.index(GGUF if quant_of(kind) else kind)


@dataclass
class Score:
    """Answers graded right or wrong: how many, how many right, and the Wilson 95% interval of the share.
    UNSEEN's answers are graded three ways: right, wrong (`incorrect`: a confident invention) or abstained."""

    n: int
    correct: int
    accuracy: float | None
    low: float | None
    high: float | None
    incorrect: int | None = None
    not_attempted: int | None = None

    @property
    def confident_wrong(self) -> float | None:
        return self.incorrect / self.n if self.incorrect is not None and self.n else None


def scores_of(data: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts whose leaves are Score dicts (they have "n"), as Scores."""
    return {key: Score(**value) if isinstance(value.get("n"), int) else scores_of(value) for key, value in data.items()}


@dataclass
class KnowledgeResult:
    """Does the model know the documents: each knowledge set answered by each model, graded."""

    sets: dict[str, dict[str, Any]]  # seen | probes | unseen -> file, rows, of (seen: sampled), seed
    key_match: dict[str, dict[str, Score]]  # set -> kind -> the reference's key words in the answer
    by_language: dict[str, dict[str, dict[str, Score]]] = field(default_factory=dict)  # set -> lang -> kind
    by_document: dict[str, dict[str, dict[str, Score]]] = field(default_factory=dict)  # set -> document -> kind
    multiple_choice: dict[str, Score] = field(default_factory=dict)  # kind -> the probes by log-likelihood
    # the base with each probe's chunk in the prompt (the probes whose chunk's text is known), and per tuned
    # model (its right - the base's) / (open book's - the base's) on those probes: how much of it was learned
    open_book: Score | None = None
    recovery: dict[str, float | None] = field(default_factory=dict)
    judged: dict[str, dict[str, Score]] = field(default_factory=dict)  # probes | unseen -> kind (--judge)
    judge: str | None = None  # the judge model: "endpoint URL model M"
    notes: list[str] = field(default_factory=list)  # how it was measured

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KnowledgeResult:
        known = {f.name for f in fields(cls)}
        typed: dict[str, Any] = {key: value for key, value in data.items() if key in known and value is not None}
        for key in ("key_match", "by_language", "by_document", "multiple_choice", "judged"):
            typed[key] = scores_of(typed.get(key) or {})
        if isinstance(typed.get("open_book"), dict):
            typed["open_book"] = Score(**typed["open_book"])
        return cls(**typed)


@dataclass
class EvalResult:
    run: str
    recipe: str
    profile: str
    evaluated_at: str
    settings: dict[str, Any]  # the run plan's eval settings as used, with decoding, format and system
    models: dict[str, str]  # kind -> what was loaded (a folder, a file, "base + adapter")
    gguf_quants: list[str] = field(default_factory=lambda: [DEFAULT_QUANT])  # the quantized GGUFs scored
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> reason, fix (the command)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # set -> rows, source, notes
    aggregate: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # set -> kind -> metric
    by_language: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # set -> lang -> kind -> ..
    forgetting: dict[str, Any] = field(default_factory=dict)
    # perplexity: f16, QUANT..., lora -> ...; perplexity_ratio: QUANT -> ratio; identical_greedy: QUANT -> set -> ..
    quantization: dict[str, Any] = field(default_factory=dict)
    quant_loss: dict[str, Any] = field(default_factory=dict)  # eval/quant_loss.py's QuantLossResult
    rows: list[dict[str, Any]] = field(default_factory=list)  # every answer with its metrics
    adapter: dict[str, Any] | None = None  # the adapter pair beside the merged GGUF, when scored
    knowledge: KnowledgeResult | None = None  # when the run's prepared data has facts

    @property
    def kinds(self) -> list[str]:
        """The models scored, in column order (the quantized GGUFs in gguf_quants' order)."""
        order = {kind: index for index, kind in enumerate(self.gguf_kinds)}
        return sorted(self.models, key=lambda kind: (column_order(kind), order.get(kind, 0)))

    @property
    def gguf_kinds(self) -> list[str]:
        return [gguf_kind(quant) for quant in self.gguf_quants]

    @property
    def main_quant(self) -> str:
        return main_quant(self.gguf_quants)

    @property
    def titles(self) -> dict[str, str]:
        return {kind: model_title(kind) for kind in (*TITLES, *self.gguf_kinds)}

    def metric(self, set_name: str, kind: str, name: str) -> Any:
        return self.aggregate.get(set_name, {}).get(kind, {}).get(name)

    def kld(self, quant: str, name: str) -> Any:
        return (self.quant_loss.get("quants") or {}).get(quant, {}).get(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for optional in ("adapter", "knowledge"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        if "gguf_quant" in data or GGUF in data.get("models", {}):
            data = upgraded(data)
        known = {f.name for f in fields(cls)}
        if isinstance(data.get("knowledge"), dict):
            data = {**data, "knowledge": KnowledgeResult.from_dict(data["knowledge"])}
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})

    @classmethod
    def load(cls, run_dir: Path) -> EvalResult:
        path = run_dir / EVAL_JSON
        if not path.is_file():
            raise FtwError(f"run {run_dir.name} has no eval.json yet. Run `ftw eval --run {run_dir.name}` first.")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, AttributeError) as unreadable:  # not JSON, not an object, keys missing
            raise FtwError(
                f"{path} is not an evaluation ftw can read ({unreadable}). "
                f"Run `ftw eval --run {run_dir.name}` to write it again."
            ) from None

    def save(self, run_dir: Path) -> Path:
        path = run_dir / EVAL_JSON
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return path


def upgraded(data: dict[str, Any]) -> dict[str, Any]:
    """An eval.json from before every quantized GGUF was scored, in today's form: its one quantized GGUF
    (kind "gguf", named by gguf_quant, Q4_K_M before --quant) becomes gguf:QUANT, and the numbers
    that were of that one GGUF are keyed by its quantization."""
    quant = data.get("gguf_quant") or DEFAULT_QUANT
    kind = gguf_kind(quant)

    def renamed(block: dict[str, Any]) -> dict[str, Any]:
        return {kind if key == GGUF else key: value for key, value in block.items()}

    quantization = dict(data.get("quantization") or {})
    for name in ("identical_greedy", "perplexity_ratio"):
        if quantization.get(name) is not None:
            quantization[name] = {quant: quantization[name]}
    return {
        **{key: value for key, value in data.items() if key != "gguf_quant"},
        "gguf_quants": [quant],
        "models": renamed(data["models"]),
        "aggregate": {name: renamed(block) for name, block in (data.get("aggregate") or {}).items()},
        "by_language": {
            name: {lang: renamed(block) for lang, block in langs.items()}
            for name, langs in (data.get("by_language") or {}).items()
        },
        "forgetting": renamed(data.get("forgetting") or {}),
        "quantization": quantization,
        "rows": [{**row, "model": kind} if row.get("model") == GGUF else row for row in data.get("rows") or []],
    }
