"""Child processes: a failure shows its last lines and names the full log."""

from __future__ import annotations

import sys

import pytest

from wrapper.core.errors import StageError
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.procs import run_logged


def test_failing_child_shows_tail_and_log_path(tmp_path):
    log = tmp_path / "logs" / "stage.log"
    script = "import sys\nfor i in range(40): print(f'line {i}')\nsys.exit(3)"
    with pytest.raises(StageError) as error:
        run_logged([sys.executable, "-c", script], log, "the stage")
    message = str(error.value)
    assert "the stage (exit code 3) failed" in message
    assert "line 39" in message and "line 10" not in message
    assert f"Full log: {log}" in message
    assert "line 0" in log.read_text(encoding="utf-8")
    assert error.value.exit_code == 1


def test_atomic_write_leaves_only_the_finished_file(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "done\n")
    assert target.read_text(encoding="utf-8") == "done\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
