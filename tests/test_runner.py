"""The runner of several artifacts (wrapper/core/stage.py run_steps): an intermediate is made only when
something made from it is made, and removed afterwards; what is up to date is left alone; an artifact
made again from other inputs makes what was made from it stale."""

from __future__ import annotations

import json
from pathlib import Path

from wrapper.core import artifacts, manifest, stage


class TextStage:
    """An artifact that is a small text file made from a setting (and from the stages it needs)."""

    force_says = "makes it again"

    def __init__(self, run_dir: Path, key: str, setting: str, needs: tuple[TextStage, ...] = ()):
        self.run_dir, self.key, self.target = run_dir, key, run_dir / f"{key}.txt"
        self.title, self.setting, self.needs = key, setting, needs
        self.logs: dict[str, Path] = {}
        self.made = 0

    def inputs(self) -> stage.StageInputs:
        upstream = {need.key: need.inputs().digest for need in self.needs}
        return stage.StageInputs(self.key, {"setting": self.setting, **upstream})

    def make(self, partial: Path) -> None:
        self.made += 1
        partial.write_text(
            "".join(need.target.read_text(encoding="utf-8") for need in self.needs) + self.setting, encoding="utf-8"
        )

    def verify(self, partial: Path) -> str:
        return f"{partial.stat().st_size} bytes"


def new_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / manifest.MANIFEST).write_text(json.dumps({"artifacts": {}}), encoding="utf-8")
    return run_dir


def pipeline(run_dir: Path, setting: str = "f16") -> tuple[TextStage, TextStage, list[stage.Step]]:
    full = TextStage(run_dir, artifacts.gguf("f16"), setting)
    quant = TextStage(run_dir, artifacts.gguf("Q4_K_M"), "q4", needs=(full,))
    removed_intermediate = stage.Step(full, wanted=False, remove=lambda: full.target.unlink(missing_ok=True))
    steps = [removed_intermediate, stage.Step(quant, needs=(full,))]
    return full, quant, steps


def test_an_intermediate_is_made_for_what_needs_it_then_removed(tmp_path):
    run_dir = new_run(tmp_path)
    full, quant, steps = pipeline(run_dir)
    made = stage.run_steps(steps)
    assert (full.made, quant.made) == (1, 1)
    assert quant.target.read_text(encoding="utf-8") == "f16q4" and not full.target.exists()
    assert set(made) == {quant.key}

    full, quant, steps = pipeline(run_dir)
    stage.run_steps(steps)
    assert (full.made, quant.made) == (0, 0)  # up to date: the removed intermediate is not made again

    full, quant, steps = pipeline(run_dir, setting="bf16")
    stage.run_steps(steps)
    assert (full.made, quant.made) == (1, 1) and quant.target.read_text(encoding="utf-8") == "bf16q4"


def test_an_artifact_made_again_from_other_inputs_forgets_what_was_made_from_it(tmp_path):
    run_dir = new_run(tmp_path)
    merged = TextStage(run_dir, artifacts.MERGED, "adapter 1")
    stage.run_atomic(merged)
    manifest.record_artifacts(run_dir, **{artifacts.MODELFILE: merged.target})
    stage.run_atomic(TextStage(run_dir, artifacts.MERGED, "adapter 1"))
    assert artifacts.MODELFILE in manifest.load(run_dir)["artifacts"]  # unchanged: nothing forgotten

    stage.run_atomic(TextStage(run_dir, artifacts.MERGED, "adapter 2"))
    recorded = manifest.load(run_dir)["artifacts"]
    assert artifacts.MERGED in recorded and artifacts.MODELFILE not in recorded


def test_a_failed_make_leaves_no_partial_and_keeps_the_finished_artifact(tmp_path):
    run_dir = new_run(tmp_path)
    stage.run_atomic(TextStage(run_dir, artifacts.MERGED, "adapter 1"))
    broken = TextStage(run_dir, artifacts.MERGED, "adapter 2")
    broken.verify = lambda partial: (_ for _ in ()).throw(ValueError("bad"))  # type: ignore[method-assign]
    try:
        stage.run_atomic(broken)
    except ValueError:
        pass
    assert broken.target.read_text(encoding="utf-8") == "adapter 1"
    assert not list(run_dir.glob("*.partial*"))
    assert manifest.load(run_dir)["artifacts"][artifacts.MERGED] == str(broken.target)
