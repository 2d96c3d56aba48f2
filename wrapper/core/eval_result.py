"""runs/RUN/eval.json, typed: what `ftw eval` measured, as the report, the model card and a comparison of
runs read it. An eval.json written by an earlier ftw loads with the sections it lacks left empty.

The models (columns) are named by kind: `base` (the model the run trained from), `merged` (the merged
HF weights), `gguf` (the quantized GGUF that was scored: `gguf_quant`), `lora` (the base GGUF with the
LoRA adapter GGUF, when the run has the pair).
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
MODEL_KINDS = ("base", "merged", "gguf", "lora")
SETS = ("control", "val", "general")


def model_titles(quant: str = DEFAULT_QUANT) -> dict[str, str]:
    """Each model's column title; the quantized GGUF's names its quantization (gguf_quant)."""
    return {"base": "base", "merged": "merged HF", "gguf": f"{quant} GGUF", "lora": "base+LoRA GGUF"}


@dataclass
class EvalResult:
    run: str
    recipe: str
    profile: str
    evaluated_at: str
    settings: dict[str, Any]  # the run plan's eval settings as used, with decoding, format and system
    models: dict[str, str]  # kind -> what was loaded (a folder, a file, "base + adapter")
    gguf_quant: str = DEFAULT_QUANT  # eval.json from before --quant: Q4_K_M
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> reason, fix (the command)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # set -> rows, source, notes
    aggregate: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # set -> kind -> metric
    by_language: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # set -> lang -> kind -> ..
    forgetting: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)  # perplexities, identical greedy answers
    quant_loss: dict[str, Any] = field(default_factory=dict)  # eval/quant_loss.py's QuantLossResult
    rows: list[dict[str, Any]] = field(default_factory=list)  # every answer with its metrics
    adapter: dict[str, Any] | None = None  # the adapter pair beside the merged GGUF, when scored

    @property
    def kinds(self) -> list[str]:
        """The models scored, in column order."""
        return [kind for kind in MODEL_KINDS if kind in self.models]

    @property
    def titles(self) -> dict[str, str]:
        return model_titles(self.gguf_quant)

    def metric(self, set_name: str, kind: str, name: str) -> Any:
        return self.aggregate.get(set_name, {}).get(kind, {}).get(name)

    def kld(self, quant: str, name: str) -> Any:
        return (self.quant_loss.get("quants") or {}).get(quant, {}).get(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["adapter"] is None:
            del data["adapter"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        known = {f.name for f in fields(cls)}
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
