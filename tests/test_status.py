"""`ftw status`: each artifact of a run made, stale (and why), removed or missing, and the next command."""

from __future__ import annotations

import json

import pytest

from wrapper.commands.status import run_status

from tests.support.runner import copy_run, run_ftw


def states(status) -> dict[str, str]:
    return {a.key: a.state for a in status.artifacts}


def test_a_rendered_run_says_train_next(runs_dir):
    run_ftw(runs_dir, "render", "--recipe", "demo", "--profile", "cpu", "--run", "fresh")
    status = run_status(runs_dir / "fresh")
    assert states(status)["adapter"] == "missing" and states(status)["gguf_q4_k_m"] == "missing"
    assert status.next_command == "ftw train --run fresh"
    shown = run_ftw(runs_dir, "status", "--run", "fresh").stdout
    assert "adapter (LoRA)" in shown and "next: ftw train --run fresh" in shown
    listed = json.loads(run_ftw(runs_dir, "status", "--json").stdout)
    assert [s["run"] for s in listed] == ["fresh"] and listed[0]["next_command"] == "ftw train --run fresh"


def test_no_runs_yet_says_how_to_start(runs_dir):
    result = run_ftw(runs_dir, "status", check=False)
    assert result.returncode == 2 and "ftw render --recipe demo" in result.stdout + result.stderr


@pytest.fixture
def copied(demo_run, tmp_path):
    return copy_run(demo_run, tmp_path / "runs")


def test_the_demo_run_made_then_stale_after_a_new_render(copied):
    runs_dir = copied.parent
    status = run_status(copied)
    made = states(status)
    for key in ("adapter", "merged", "gguf_f16", "gguf_q4_k_m", "modelfile"):
        assert made[key] == "made", (key, made)
    q4 = next(a for a in status.artifacts if a.key == "gguf_q4_k_m")
    assert q4.bytes == (copied / "gguf" / "e2e-Q4_K_M.gguf").stat().st_size
    assert status.next_command in (None, "ftw eval --run e2e")

    run_ftw(runs_dir, "render", "--recipe", "demo", "--profile", "cpu", "--run", "e2e", "--set", "learning_rate=5e-4")
    status = run_status(copied)
    adapter = next(a for a in status.artifacts if a.key == "adapter")
    assert adapter.state == "stale" and "learning_rate: 0.001 -> 0.0005" in adapter.why
    assert status.next_command == "ftw train --run e2e --force"
    shown = run_ftw(runs_dir, "status", "--run", "e2e").stdout
    assert "stale" in shown and "next: ftw train --run e2e --force" in shown
