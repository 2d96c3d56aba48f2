"""TensorBoard: training writes its curves by default, and `ftw board` shows one run or several side by side."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from wrapper.core import manifest
from wrapper.train import board

from tests.support.runner import ftw_in_process


def fake_run(runs_dir: Path, name: str, events: bool = True) -> Path:
    run = runs_dir / name
    (run / "adapter" / "runs" / "Dec03_host").mkdir(parents=True)
    (run / manifest.MANIFEST).write_text("{}", encoding="utf-8")
    if events:
        (run / "adapter" / "runs" / "Dec03_host" / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    return run


def test_a_run_without_logs_says_why_and_what_to_run(runs_dir):
    fake_run(runs_dir, "old", events=False)
    code, out = ftw_in_process("board", "--run", "old")
    assert code == 2 and "run old has no TensorBoard logs" in out
    assert out.endswith("ftw train --run old --force")
    code, out = ftw_in_process("board", "--run", "missing")
    assert code == 2 and "no run 'missing'" in out


def test_a_port_in_use_is_named_before_anything_starts(runs_dir):
    fake_run(runs_dir, "a")
    fake_run(runs_dir, "b")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = ftw_in_process("board", "--run", "a", "--run", "b", "--port", str(port))
    assert code == 2 and f"127.0.0.1:{port} is already in use" in out
    assert out.endswith(f"ftw board --run a --run b --port {port + 1}")
    assert not (runs_dir / "a" / "logs").exists()


def test_training_writes_curves_and_board_shows_runs_side_by_side(demo_run, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = list((demo_run / "adapter" / "runs").iterdir())
    assert len(runs) == 1, runs
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    losses = [event.value for event in events.Scalars("train/loss")]
    logged = [
        json.loads(line)
        for line in (demo_run / "adapter" / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert losses and losses == pytest.approx([entry["loss"] for entry in logged if "loss" in entry], rel=1e-4)

    # two runs with the demo's curves: the board reads only their logs
    runs_dir = tmp_path / "runs"
    for name in ("first", "second"):
        run = fake_run(runs_dir, name, events=False)
        shutil.copytree(demo_run / "adapter" / "runs", run / "adapter" / "runs", dirs_exist_ok=True)
    monkeypatch.setenv("FTW_RUNS_DIR", str(runs_dir))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shown = board.board_for(("first", "second"), "127.0.0.1", port)
    with board.start(shown, timeout_s=120) as child:
        listed: dict = {}
        for _ in range(60):  # TensorBoard lists the runs once it has read them
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=10) as response:
                listed = json.loads(response.read())
            if len(listed) >= 2:
                break
            time.sleep(1)
        assert any(name.startswith("first/") for name in listed), listed
        assert any(name.startswith("second/") for name in listed), listed
        process = child.process
    assert process.poll() is not None
