"""Smoke stage: load the run's quantized GGUF in llama.cpp and ask the recipe's check prompts.

Also makes the demo's closing table: the same questions to the base model, so the
effect of training is visible beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wrapper.core import artifacts, manifest
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import DEFAULT_QUANT
from wrapper.prompts.training_format import training_format
from wrapper.runtime.models import GgufModel, HfModel


@dataclass
class Answer:
    prompt: str
    expect: str
    text: str

    @property
    def passed(self) -> bool:
        return self.expect.casefold() in self.text.casefold()


def ask_gguf(run_dir: Path, quant: str) -> list[Answer]:
    plan = manifest.plan_of(run_dir)
    gguf = manifest.artifact(run_dir, artifacts.gguf(quant))
    merged = manifest.artifact(run_dir, artifacts.MERGED)
    fmt = training_format(merged, plan.template, plan.system)
    model = GgufModel(gguf)
    try:
        return [
            Answer(c["prompt"], c["expect"], fmt.decode(model.greedy(fmt.prompt_ids(c["prompt"]), fmt.stop_ids())))
            for c in plan.checks
        ]
    finally:
        model.close()


def ask_base(run_dir: Path) -> list[Answer]:
    plan = manifest.plan_of(run_dir)
    base = plan.merge_base
    fmt = training_format(base, plan.template, plan.system)
    model = HfModel(Path(base))
    return [
        Answer(c["prompt"], c["expect"], fmt.decode(model.greedy(fmt.prompt_ids(c["prompt"]), fmt.stop_ids())))
        for c in plan.checks
    ]


def smoke(run_dir: Path, quant: str = DEFAULT_QUANT) -> list[Answer]:
    """The quantized GGUF's answers to the recipe's check prompts (none when it has none)."""
    return ask_gguf(run_dir, quant) if manifest.plan_of(run_dir).checks else []


def compare_with_base(run_dir: Path, quant: str = DEFAULT_QUANT) -> tuple[list[Answer], list[Answer]]:
    """The base model's and the fine-tuned quantized GGUF's answers to the check prompts."""
    plan = manifest.plan_of(run_dir)
    if not plan.checks:
        raise FtwError(f"{plan.recipe_file} has no check prompts (`checks:`) to compare on")
    tuned = ask_gguf(run_dir, quant)
    return ask_base(run_dir), tuned
