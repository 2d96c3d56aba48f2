"""One writer per run: a second command that writes into the run is refused with the first one's pid and
command; a lock left by a process that died is free; read-only commands take no lock."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wrapper.core.errors import FtwError
from wrapper.core.runlock import holder, run_lock

from tests.support.runner import REPO, run_ftw

HOLD = """
import sys, time
from wrapper.core.runlock import run_lock
with run_lock("busy", "ftw data synth --run busy"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holding(runs_dir):
    """Another process holds run 'busy', as a long `ftw data synth` would."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD], cwd=REPO, stdout=subprocess.PIPE, text=True, encoding="utf-8"
    )
    assert child.stdout.readline().strip() == "held"
    yield child
    child.kill()
    child.wait()


def test_a_second_writer_is_refused_with_the_first_ones_pid_and_command(holding, runs_dir):
    with pytest.raises(FtwError) as refused, run_lock("busy"):
        pass
    message = str(refused.value)
    assert f"pid {holding.pid}" in message and "`ftw data synth --run busy`" in message
    assert "ftw report --run busy" in message
    # through the CLI: exit 2 before anything starts, and the run folder is left alone
    result = run_ftw(runs_dir, "render", "--recipe", "demo", "--profile", "cpu", "--run", "busy", check=False)
    assert result.returncode == 2 and f"pid {holding.pid}" in result.stdout + result.stderr
    assert not (runs_dir / "busy").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(holding, runs_dir):
    holding.kill()  # SIGKILL: no cleanup ran, its holder file is still there
    holding.wait()
    assert holder("busy")["pid"] == holding.pid
    with run_lock("busy", "ftw train --run busy"):
        assert holder("busy")["command"] == "ftw train --run busy"
    assert holder("busy") == {}


def test_other_runs_and_readers_are_not_held_up(holding, runs_dir):
    with run_lock("other"):
        pass
    result = run_ftw(runs_dir, "report", "--run", "busy", check=False)  # a reader: no lock, its own message
    assert "another ftw process" not in result.stdout + result.stderr
