"""The dtype a base model's weights are loaded and computed in when it trains on a CPU.

Nearly every chat model's config.json says bfloat16, and LLaMA-Factory loads the base with
torch_dtype="auto", so without a choice made here the frozen weights stay in bfloat16. On a
CPU without fast bfloat16 that is the difference between seconds and minutes per step
(wrapper/core/cpu.py; bench/README.md). The recipe's `model.cpu_dtype` forces either.
"""

from __future__ import annotations

from dataclasses import dataclass

from wrapper.core.cpu import Bf16Support, bf16_support

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ComputeDtype:
    dtype: str  # float32 | bfloat16
    reason: str  # one line: the setting and what the CPU reported

    @property
    def bytes_per_param(self) -> int:
        return BYTES_PER_PARAM[self.dtype]


def for_cpu(setting: str = "auto", support: Bf16Support | None = None) -> ComputeDtype:
    """`setting` is model.cpu_dtype: auto, float32 or bfloat16."""
    if setting != "auto":
        return ComputeDtype(setting, f"model.cpu_dtype: {setting}")
    support = support or bf16_support()
    if support.fast:
        return ComputeDtype("bfloat16", f"auto: this CPU has fast bfloat16 ({support.evidence})")
    return ComputeDtype("float32", f"auto: no fast bfloat16 on this CPU ({support.evidence})")


def config_dtype(config: dict) -> str | None:
    """The dtype a config.json declares (transformers 5 writes `dtype`, earlier versions `torch_dtype`)."""
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None


def with_dtype(config: dict, dtype: str) -> dict:
    """config.json as transformers then loads it in `dtype` (both spellings, so every version agrees)."""
    changed = dict(config)
    changed["dtype"] = dtype
    if "torch_dtype" in changed:
        changed["torch_dtype"] = dtype
    return changed
