"""wrapper/core/platform.py: how children start, stop and die with ftw, their environment, the port
probe and the console, on each system.

The Windows branches are chosen here with sys.platform monkeypatched: what they hand to Popen, the
order of a stop (on a real process tree, whose Ctrl-Break is recorded rather than sent: Linux has no
console events), the Job Object's calls (to a recording stand-in for kernel32). None of this proves
Windows itself; the POSIX path runs for real in tests/test_faults.py, test_multi_process.py and
test_llama_server.py (slow).
"""

from __future__ import annotations

import ctypes
import io
import json
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import psutil  # before any test pretends to be Windows: psutil picks its platform when first imported
import pytest

from wrapper.core import platform, ui
from wrapper.core.errors import FtwError
from wrapper.core.procs import child_env, run_logged

from tests.support.runner import REPO, ftw_argv, ftw_env


@pytest.fixture
def windows(monkeypatch):
    """sys.platform only: pathlib reads os.name to choose its classes, and pytest itself needs POSIX paths."""
    monkeypatch.setattr(sys, "platform", "win32")


# --- starting a child in its own group ---------------------------------------------------------------


def test_posix_children_start_in_a_new_session_and_die_with_ftw():
    assert platform.own_group_options() == {"start_new_session": True, "preexec_fn": platform.die_with_parent}


def test_windows_children_start_in_a_new_process_group_inside_ftws_job(windows, monkeypatch):
    joined = []
    monkeypatch.setattr(platform, "join_kill_on_close_job", lambda: joined.append(True) or True)
    options = platform.own_group_options()
    assert options == {"creationflags": 0x200}, "no preexec_fn: Popen refuses it on Windows"
    assert joined == [True]


class Kernel32Function:
    def __init__(self, calls: list, name: str, result):
        self.calls, self.name, self.result = calls, name, result

    def __call__(self, *args):
        self.calls.append((self.name, args))
        return self.result


class FakeKernel32:
    """Records the calls made to it; AssignProcessToJobObject answers `assigned`."""

    CURRENT_PROCESS = -1

    def __init__(self, assigned: int = 1):
        self.calls: list = []
        answers = {"CreateJobObjectW": 1234, "SetInformationJobObject": 1, "AssignProcessToJobObject": assigned}
        answers |= {"GetCurrentProcess": self.CURRENT_PROCESS, "CloseHandle": 1}
        for name, result in answers.items():
            setattr(self, name, Kernel32Function(self.calls, name, result))

    def called(self, name: str) -> list[tuple]:
        return [args for called, args in self.calls if called == name]


@pytest.fixture
def kernel32(windows, monkeypatch):
    fake = FakeKernel32()
    monkeypatch.setattr(platform, "kernel32", lambda: fake)
    monkeypatch.setattr(platform, "_job", [])
    return fake


def test_ftw_joins_a_job_that_kills_its_processes_when_it_ends(kernel32):
    assert platform.join_kill_on_close_job()
    [(_attributes, _name)] = kernel32.called("CreateJobObjectW")
    [(job, info_class, limits, size)] = kernel32.called("SetInformationJobObject")
    assert (job, info_class) == (1234, 9)
    assert limits._obj.BasicLimitInformation.LimitFlags == 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    assert size == ctypes.sizeof(platform.JobLimits)
    assert kernel32.called("AssignProcessToJobObject") == [(1234, FakeKernel32.CURRENT_PROCESS)]
    assert kernel32.called("CloseHandle") == [], "the handle stays open for as long as ftw runs"

    assert platform.join_kill_on_close_job()
    assert len(kernel32.called("CreateJobObjectW")) == 1, "one job for every child"


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="the layout checked is 64-bit Windows'")
def test_the_job_limits_have_windows_x64_layout():
    assert ctypes.sizeof(platform.JobLimits) == 144  # sizeof(JOBOBJECT_EXTENDED_LIMIT_INFORMATION) on x64
    assert platform.JobLimits.IoInfo.offset == 64 and platform.JobLimits.ProcessMemoryLimit.offset == 112


def test_a_job_windows_refuses_is_closed_and_reported(kernel32):
    kernel32.AssignProcessToJobObject.result = 0
    assert not platform.join_kill_on_close_job()
    assert kernel32.called("CloseHandle") == [(1234,)]
    assert platform._job == []


# --- stopping a child's group --------------------------------------------------------------------------

# A child that starts a grandchild and then waits: the tree a stop must end.
TREE_SCRIPT = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(grandchild.pid, flush=True)
time.sleep(60)
"""


class ConsoleEventsRecorded:
    """A real child whose send_signal records the event instead of sending it (Linux has no console events)."""

    def __init__(self, popen: subprocess.Popen, refuse: bool = False):
        self.popen, self.pid, self.refuse = popen, popen.pid, refuse
        self.sent: list[int] = []

    def send_signal(self, sig: int) -> None:
        self.sent.append(sig)
        if self.refuse:
            raise OSError("no console")

    def poll(self):
        return self.popen.poll()

    def wait(self, timeout=None):
        return self.popen.wait(timeout)


@pytest.fixture
def tree():
    popen = subprocess.Popen([sys.executable, "-c", TREE_SCRIPT], stdout=subprocess.PIPE, text=True)
    grandchild = int(popen.stdout.readline())
    yield popen, grandchild
    for pid in (popen.pid, grandchild):
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    popen.wait()
    popen.stdout.close()


def ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_windows_group_is_the_childs_process_tree(windows, tree):
    popen, grandchild = tree
    assert sorted(platform.group_members(popen.pid)) == sorted([popen.pid, grandchild])


def test_windows_stop_sends_ctrl_break_then_kills_the_tree_after_the_grace(windows, tree):
    popen, grandchild = tree
    child = ConsoleEventsRecorded(popen)
    started = time.monotonic()
    platform.stop_group(child, grace_s=1)
    assert child.sent == [1], "CTRL_BREAK_EVENT first, to the child's group"
    assert time.monotonic() - started >= 1, "the tree had its grace before it was killed"
    assert popen.poll() is not None and ended(grandchild)


def test_windows_stop_without_a_shared_console_kills_the_tree_at_once(windows, tree):
    popen, grandchild = tree
    child = ConsoleEventsRecorded(popen, refuse=True)
    started = time.monotonic()
    platform.stop_group(child, grace_s=30)
    assert time.monotonic() - started < 15
    assert popen.poll() is not None and ended(grandchild)


def test_windows_stop_of_an_exited_child_sends_nothing(windows):
    popen = subprocess.Popen([sys.executable, "-c", "pass"])
    popen.wait()
    child = ConsoleEventsRecorded(popen)
    platform.stop_group(child, grace_s=1)
    assert child.sent == []


# --- the signals that stop ftw -------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="SIGHUP is POSIX; the Windows signals are checked with a stand-in")
def test_ftw_stops_on_the_signals_each_system_has():
    assert platform.STOP_SIGNALS == (signal.SIGTERM, signal.SIGHUP)
    windows_signals = types.SimpleNamespace(SIGINT=2, SIGTERM=15, SIGBREAK=21)  # Windows' signal module
    assert platform.stop_signals(windows_signals) == (15, 21)


# --- the child's environment and program ---------------------------------------------------------------


def test_children_write_utf8_on_every_system(monkeypatch):
    monkeypatch.delenv("PYTHONUTF8", raising=False)
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")
    env = child_env()
    assert env["PYTHONUTF8"] == "1" and env["PYTHONIOENCODING"] == "utf-8", "their stdout is a log read as UTF-8"
    monkeypatch.setenv("PYTHONUTF8", "0")
    assert child_env()["PYTHONUTF8"] == "0", "a user who turned UTF-8 mode off is heard"


def write_program(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / name
    program.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
    program.chmod(0o755)
    return program


def test_a_bare_program_name_runs_from_the_childs_path_with_argv_unchanged(tmp_path):
    program = write_program(
        tmp_path / "bin",
        "ftw-probe",
        "import os, sys\nprint('argv', sys.argv[1:], os.environ['PYTHONUTF8'], os.environ['PYTHONIOENCODING'])\n"
        "print('Қазақ тілі, русский язык')\n",
    )
    log = tmp_path / "logs" / "probe.log"
    run_logged(["ftw-probe", "one", "два"], log, "the probe", env={"PATH": str(program.parent)})
    text = log.read_text(encoding="utf-8")
    assert "$ ftw-probe one два\n" in text
    assert "argv ['one', 'два'] 1 utf-8" in text and "Қазақ тілі, русский язык" in text


def test_a_missing_program_is_a_message_before_anything_starts(tmp_path):
    log = tmp_path / "logs" / "missing.log"
    with pytest.raises(FtwError) as error:
        run_logged(["ftw-no-such-program", "train"], log, "training", env={"PATH": str(tmp_path)})
    message = str(error.value)
    assert message.startswith("ftw-no-such-program was not found on PATH")
    assert message.endswith(f"{sys.executable} -m pip install -r requirements.txt")
    assert not log.exists()


def test_a_program_given_as_a_path_is_not_looked_up(tmp_path):
    assert platform.find_program(str(tmp_path / "llama-server"), {"PATH": ""}) == str(tmp_path / "llama-server")


# --- the port probe ------------------------------------------------------------------------------------


def test_the_port_probe_reuses_time_wait_on_posix_and_binds_exclusively_on_windows(monkeypatch):
    assert platform.exclusive_bind_option() == (socket.SOL_SOCKET, socket.SO_REUSEADDR)
    monkeypatch.setattr(sys, "platform", "win32")
    assert platform.exclusive_bind_option() == (socket.SOL_SOCKET, -5)  # SO_EXCLUSIVEADDRUSE, ~SO_REUSEADDR


# --- the console ---------------------------------------------------------------------------------------


def test_a_stream_without_cyrillic_or_the_done_mark_replaces_them(monkeypatch):
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="cp1252")
    utf8 = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", utf8)
    ui.never_fail_to_print()
    stream.write("✓ Қазақ — done")
    stream.flush()
    assert raw.getvalue() == "? ????? — done".encode("cp1252"), "the stream keeps its encoding"
    assert (stream.errors, utf8.errors) == ("replace", "strict")


def test_ftw_prints_russian_and_kazakh_to_a_cp1252_stdout_without_a_traceback(tmp_path):
    """As on Windows with stdout redirected: a file named in Kazakh and Russian, rows in both."""
    rows = [
        {"instruction": "Какая столица Казахстана?", "output": "Астана."},
        {"instruction": "Қазақстанның астанасы қай қала?", "output": "Астана қаласы: ұлы дала, әңгіме, өнер."},
        {"instruction": "Какая столица Казахстана?", "output": "Астана."},  # a duplicate: its file:line is printed
    ]
    data = tmp_path / "қазақ_данные.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    result = subprocess.run(
        [*ftw_argv(installed=True), "data", "check", str(data)],
        cwd=REPO,
        env=ftw_env(tmp_path / "runs", {"PYTHONIOENCODING": "cp1252"}),
        capture_output=True,
        timeout=600,
    )
    out, err = result.stdout.decode("cp1252"), result.stderr.decode("cp1252")
    assert result.returncode == 0, out + err
    assert "Traceback" not in out + err and "UnicodeEncodeError" not in out + err
    assert "3 rows read, 3 valid" in out and ":3: exact duplicate of" in out
