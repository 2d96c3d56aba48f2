"""Several processes, for real, on the CPU: the demo on profile cpux2 is two training processes
launched by LLaMA-Factory's torchrun path and talking over gloo, the same path as NAMExN on GPUs.

One run (2 epochs at a higher learning rate than the demo's 4, so that it still learns the
lore in 16 steps) is stopped after its first checkpoint, resumed, merged, converted and
asked the recipe's questions. A one-process run of the same settings is the reference: both
see the same rows in each optimizer step, so their losses must agree step for step until
the end of the first epoch, where the two processes' uneven share of the last rows differs.
The reference is stopped too, refuses to resume under changed settings, and resumes under the
same ones: the one-process resume is checked on it rather than on a third training run.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml
from test_faults import processes_mentioning, wait_for

from tests.support.runner import run_ftw, start_ftw

pytestmark = pytest.mark.slow

SETTINGS = ["num_train_epochs=2", "learning_rate=3e-3"]  # as --set
STEPS = 16  # 30 rows, an effective batch of 4, 2 epochs
STOP_AFTER = 10  # the demo's save_steps
SAME_ROWS_STEPS = 7  # the first epoch's full batches: 7 x 4 rows of 30


def losses(run: Path) -> list[float]:
    state = json.loads((run / "adapter" / "trainer_state.json").read_text(encoding="utf-8"))
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def train_stopped_after_a_checkpoint(runs_dir: Path, run: Path) -> str:
    """`ftw train` stopped (SIGTERM) once the first checkpoint is complete; its output."""
    child = start_ftw(runs_dir, "train", "--run", run.name)
    state = run / "adapter" / f"checkpoint-{STOP_AFTER}" / "trainer_state.json"
    wait_for(state.is_file, "the first checkpoint", child)
    child.send_signal(signal.SIGTERM)
    output = child.communicate(timeout=120)[0]
    assert child.returncode == 128 + signal.SIGTERM, output
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The two-process run (stopped, resumed, exported, converted, asked) and the one-process reference.
    Rendering and asking run in this process (as tests/test_profiles.py renders): ~20 s less than the CLI."""
    from wrapper.serve.smoke import ask_gguf
    from wrapper.train.render import render

    runs_dir = tmp_path_factory.mktemp("multi") / "runs"
    two, one = runs_dir / "two", runs_dir / "one"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FTW_RUNS_DIR", str(runs_dir))
        render("demo", "cpux2", "two", [], SETTINGS)
        render("demo", "cpu", "one", [], SETTINGS)
    stopped = train_stopped_after_a_checkpoint(runs_dir, two)
    left_behind = processes_mentioning(str(two / "train.yaml"))  # torchrun's agent and workers stop with ftw
    unfinished = (two / "adapter" / "train_results.json").exists()
    resumed = run_ftw(runs_dir, "train", "--run", "two").stdout
    one_process = stop_refuse_and_resume(runs_dir, one)
    for stage in ("export", "gguf"):
        run_ftw(runs_dir, stage, "--run", "two")
    return {
        "two": two,
        "one": one,
        "stopped": stopped,
        "left_behind": left_behind,
        "unfinished": unfinished,
        "resumed": resumed,
        "one_process": one_process,
        "answers": ask_gguf(two, "Q4_K_M"),  # what `ftw smoke` asks
    }


def stop_refuse_and_resume(runs_dir: Path, run: Path) -> dict:
    """The one-process run: stopped after its first checkpoint, then `ftw train` under a changed learning
    rate (refused), then under the same settings again (resumed to the end)."""
    from wrapper.train.render import render

    stopped = train_stopped_after_a_checkpoint(runs_dir, run)
    planned = [json.loads(line) for line in (run / "adapter" / "trainer_log.jsonl").open(encoding="utf-8")]
    found = {
        "stopped": stopped,
        "planned": planned[-1]["total_steps"],
        "left_behind": processes_mentioning(str(run / "train.yaml")),
        "unfinished": (run / "adapter" / "train_results.json").exists(),
    }
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FTW_RUNS_DIR", str(runs_dir))
        render("demo", "cpu", run.name, [], [*SETTINGS, "learning_rate=5e-4"])
        found["refused"] = run_ftw(runs_dir, "train", "--run", run.name, check=False)
        found["unfinished_after_refusal"] = (run / "adapter" / "train_results.json").exists()
        render("demo", "cpu", run.name, [], SETTINGS)
    found["resumed"] = run_ftw(runs_dir, "train", "--run", run.name).stdout
    return found


def test_two_ranks_share_the_recipes_effective_batch_over_gloo(runs):
    train = yaml.safe_load((runs["two"] / "train.yaml").read_text(encoding="utf-8"))
    assert (train["per_device_train_batch_size"], train["gradient_accumulation_steps"]) == (2, 1)  # 2 x 1 x 2 = 4
    assert train["ddp_backend"] == "gloo"
    log = (runs["two"] / "logs" / "train.log").read_text(encoding="utf-8")
    for rank in (0, 1):
        assert f"Process rank: {rank}, world size: 2, device: cpu" in log
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log
    # each rank saves its own random state into a checkpoint
    assert sorted(p.name for p in (runs["two"] / "adapter" / f"checkpoint-{STOP_AFTER}").glob("rng_state_*")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]


def test_losses_follow_the_one_process_run(runs):
    two, one = losses(runs["two"]), losses(runs["one"])
    assert len(two) == len(one) == STEPS
    assert two[:SAME_ROWS_STEPS] == pytest.approx(one[:SAME_ROWS_STEPS], rel=0.02)
    assert sum(two[-4:]) / 4 == pytest.approx(sum(one[-4:]) / 4, rel=0.5)
    assert sum(two[-4:]) / 4 < 0.25 * two[0]  # it learnt, as the one-process run did


def test_stopped_run_resumes_from_its_checkpoint_at_the_next_step(runs):
    assert "interrupted" in runs["stopped"] and "Re-run the same command" in runs["stopped"]
    assert runs["left_behind"] == [], "a training process outlived ftw"
    assert not runs["unfinished"]
    assert f"Resuming from checkpoint-{STOP_AFTER}" in runs["resumed"]
    log = (runs["two"] / "logs" / "train.log").read_text(encoding="utf-8")
    assert f"Resuming training from checkpoint with epoch 1 and global step {STOP_AFTER}" in log
    entries = [json.loads(line) for line in (runs["two"] / "adapter" / "trainer_log.jsonl").open(encoding="utf-8")]
    steps = [entry["current_steps"] for entry in entries if "loss" in entry]  # the last entry sums the run up
    resumed_at = len(steps) - 1 - steps[::-1].index(STOP_AFTER + 1)  # the second try's first step
    assert steps[:resumed_at][:STOP_AFTER] == list(range(1, STOP_AFTER + 1))  # the first try, until stopped
    assert steps[resumed_at:] == list(range(STOP_AFTER + 1, STEPS + 1))
    state = json.loads((runs["two"] / "adapter" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == STEPS


def test_checkpoints_and_the_adapter_are_kept(runs):
    adapter = runs["two"] / "adapter"
    assert sorted(p.name for p in adapter.glob("checkpoint-*")) == [f"checkpoint-{STOP_AFTER}", f"checkpoint-{STEPS}"]
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "train_results.json").is_file()


def test_export_and_gguf_answer_like_the_one_process_demo(runs):
    artifacts = json.loads((runs["two"] / "manifest.json").read_text(encoding="utf-8"))["artifacts"]
    assert {"adapter", "merged", "gguf_q4_k_m"} <= set(artifacts)
    assert Path(artifacts["gguf_q4_k_m"]).is_file()
    answers = runs["answers"]
    assert len(answers) == 4 and all(answer.passed for answer in answers), [(a.prompt, a.text) for a in answers]


def test_one_process_run_stopped_refuses_changed_settings_then_resumes_to_the_planned_step(runs):
    found, run = runs["one_process"], runs["one"]
    assert "interrupted" in found["stopped"] and "Re-run the same command" in found["stopped"]
    assert found["left_behind"] == [], "llamafactory-cli outlived ftw"
    assert not found["unfinished"]
    refused = found["refused"]
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "learning_rate: 0.003 -> 0.0005" in refused.stderr and "--force" in refused.stderr
    assert not found["unfinished_after_refusal"]
    assert f"Resuming from checkpoint-{STOP_AFTER}" in found["resumed"]
    assert "Resuming training from checkpoint" in (run / "logs" / "train.log").read_text(encoding="utf-8")
    state = json.loads((run / "adapter" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == found["planned"] == STEPS
    assert "adapter" in json.loads((run / "manifest.json").read_text(encoding="utf-8"))["artifacts"]
