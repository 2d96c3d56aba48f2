"""Smoke stage: load the run's quantized GGUF in llama.cpp and ask the recipe's check prompts.

Also makes the demo's closing table: the same questions to the base model, so the
effect of training is visible beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from wrapper.core import artifacts, manifest
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import DEFAULT_QUANT
from wrapper.core.ui import console, done
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
    plan = manifest.plan_of(run_dir)
    if not plan.checks:
        console.print("The recipe has no check prompts (`checks:`); nothing to ask.")
        return []
    answers = ask_gguf(run_dir, quant)
    table = Table(title=f"{plan.run}: {quant} GGUF in llama.cpp", show_lines=True)
    for column in ("prompt", "expected", "answer", "ok"):
        table.add_column(column)
    for answer in answers:
        table.add_row(answer.prompt, answer.expect, answer.text, "✓" if answer.passed else "✗")
    console.print(table)
    failed = [a for a in answers if not a.passed]
    if failed:
        raise FtwError(
            f"{len(failed)} of {len(answers)} check prompts did not get the expected answer "
            f"from the {quant} GGUF (it was written; the checks are in {plan.recipe_file})."
        )
    done(f"all {len(answers)} check prompts answered as expected by the {quant} GGUF")
    return answers


def compare_with_base(run_dir: Path, quant: str = DEFAULT_QUANT) -> None:
    plan = manifest.plan_of(run_dir)
    if not plan.checks:
        raise FtwError(f"{plan.recipe_file} has no check prompts (`checks:`) to compare on")
    tuned = ask_gguf(run_dir, quant)
    base = ask_base(run_dir)
    table = Table(title=f"{plan.run}: base model vs fine-tuned {quant} GGUF (greedy, training format)", show_lines=True)
    for column in ("question", "base model", f"fine-tuned {quant}", "ok"):
        table.add_column(column)
    for before, after in zip(base, tuned):
        table.add_row(after.prompt, before.text, after.text, "✓" if after.passed else "✗")
    console.print(table)
    passed = sum(a.passed for a in tuned)
    gguf = manifest.artifact(run_dir, artifacts.gguf(quant))
    console.print(
        f"{passed}/{len(tuned)} trained answers reproduced by {gguf.name}"
        f" (base model: {sum(b.passed for b in base)}/{len(base)})."
    )
