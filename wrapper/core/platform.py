"""The one place that knows the operating system for child processes: how a child starts in a group of its
own, how that group is stopped, how it dies with ftw, which signals stop ftw, what every child's
environment adds, which program a bare name starts, and how a port is probed.

POSIX (Linux, macOS): a child leads a new session (its process group); stopping it is SIGTERM to
the group, a grace, then SIGKILL; on Linux it also gets SIGTERM if ftw is killed outright
(PR_SET_PDEATHSIG).

Windows: a child starts with CREATE_NEW_PROCESS_GROUP (Ctrl-C at the console no longer reaches it:
ftw stops it); stopping it is CTRL_BREAK_EVENT to its group, a grace, then a kill of its whole tree
(psutil). Before the first child, ftw puts itself in a Job Object that kills every process in it when
its last handle closes, so the children it starts die with it even when it is killed outright.
None of the Windows branches has run on Windows yet: they are unit-tested from Linux with the
platform monkeypatched (tests/test_platform.py). Known gaps there: a grandchild started after the
stop began and whose parent has already exited is not found by the tree kill (the Job Object still
ends it when ftw exits), and if the Job Object cannot be made (ftw's console host forbids it),
a child of an ftw that is killed outright keeps running.

Also the names and places that differ (`.exe`, the venv's Scripts folder, MSVC), and how llama.cpp's
programs are given paths (Windows hands them argv in the ANSI code page). Everything reads
`sys.platform` when called (not at import), so that tests can take the Windows branch on Linux with
`monkeypatch.setattr(sys, "platform", "win32")`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ntpath
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import psutil

from wrapper.core.errors import FtwError
from wrapper.core.ui import step

# Win32 constants, spelled here because the Python modules define them only on Windows.
CREATE_NEW_PROCESS_GROUP = 0x00000200  # winbase.h
CTRL_BREAK_EVENT = 1  # wincon.h; signal.CTRL_BREAK_EVENT on Windows
SO_EXCLUSIVEADDRUSE = ~0x0004  # winsock2.h: ~SO_REUSEADDR; socket.SO_EXCLUSIVEADDRUSE on Windows
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9  # JobObjectExtendedLimitInformation
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000

KILLED_WAIT_S = 10  # for a killed grandchild to be gone (its own child, ftw waits for without a limit)


# --- starting a child in its own group ---------------------------------------------------------


def own_group_options() -> dict[str, Any]:
    """subprocess.Popen's arguments that start a child in a process group of its own, dying with ftw."""
    if sys.platform == "win32":
        join_kill_on_close_job()
        return {"creationflags": CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True, "preexec_fn": die_with_parent}


def die_with_parent() -> None:
    """In the child, before exec: if ftw itself is killed outright (kill -9), the child gets SIGTERM
    instead of training on unattended in its own session (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _BasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class _IoCounters(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64) for name in ("Reads", "Writes", "Others", "ReadBytes", "WriteBytes", "OtherBytes")
    ]


class JobLimits(ctypes.Structure):
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION (winnt.h)."""

    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", _IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


_job: list[int] = []  # the Job Object's handle, held (never closed) for as long as ftw runs


def kernel32() -> Any:
    return ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]


def join_kill_on_close_job() -> bool:
    """Windows: put ftw in a Job Object whose processes all end when its handle closes, that is when ftw
    ends however it ends. Children inherit the job when they start, so none escapes before it is added
    (the venv's python.exe and console-script launchers start a second process at once). True once ftw
    is in it; False if Windows refused (the stop on ftw's own way out still ends the children)."""
    if _job:
        return True
    k32 = kernel32()
    k32.CreateJobObjectW.restype = ctypes.c_void_p
    k32.GetCurrentProcess.restype = ctypes.c_void_p
    k32.SetInformationJobObject.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    k32.AssignProcessToJobObject.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    job = k32.CreateJobObjectW(None, None)  # no security attributes: the handle is not inherited
    if not job:
        return False
    limits = JobLimits()
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    limited = k32.SetInformationJobObject(
        job, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS, ctypes.byref(limits), ctypes.sizeof(limits)
    )
    if not (limited and k32.AssignProcessToJobObject(job, k32.GetCurrentProcess())):
        k32.CloseHandle(job)
        return False
    _job.append(job)
    return True


# --- stopping a child's group ------------------------------------------------------------------


def stop_group(child: subprocess.Popen, grace_s: float) -> None:
    """Ask the child's whole group to stop, wait up to grace_s for all of it (not only the child:
    torchrun's agent outlives llamafactory-cli while it stops the training processes), then kill what is left.
    POSIX: SIGTERM to the process group, then SIGKILL."""
    if sys.platform == "win32":
        stop_tree(child, grace_s)
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace_s)
    while group_members(child.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if child.poll() is None or group_members(child.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def stop_tree(child: subprocess.Popen, grace_s: float) -> None:
    """Windows: CTRL_BREAK_EVENT to the child's group (it was started with CREATE_NEW_PROCESS_GROUP), then
    kill the process tree. The tree is read before the child can exit: Windows does not re-parent
    orphans, so once the child is gone its children can no longer be found from it."""
    tree = process_tree(child.pid)
    if child.poll() is None:
        try:
            child.send_signal(CTRL_BREAK_EVENT)
        except OSError:  # no console shared with the child (ftw started detached): kill at once
            grace_s = 0
    _gone, alive = psutil.wait_procs(tree, timeout=grace_s)
    alive += [found for found in process_tree(child.pid) if found not in alive]
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    child.wait()  # a kill only starts the end; the files the tree held are released before ftw removes them
    psutil.wait_procs([process for process in alive if process.pid != child.pid], timeout=KILLED_WAIT_S)


def process_tree(pid: int) -> list[Any]:
    """psutil processes: pid and every descendant of it, or none once pid has exited."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def group_members(group: int) -> list[int]:
    """The live processes of a child's group: on POSIX from /proc (Linux; elsewhere none are seen), where
    zombies don't count (an orphan's zombie may never be reaped where PID 1 is not an init, and kill(0)
    still finds it); on Windows the child's process tree."""
    if sys.platform == "win32":
        return [process.pid for process in process_tree(group) if process.is_running()]
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state, _parent, process_group = (entry / "stat").read_text(encoding="latin-1").rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z" and int(process_group) == group:
            found.append(int(entry.name))
    return found


# --- the signals that stop ftw ---------------------------------------------------------------


def stop_signals(signals: Any = signal) -> tuple[int, ...]:
    """The signals that stop ftw like Ctrl-C does (cli.py), of those the system has: Windows has no SIGHUP;
    its SIGBREAK is Ctrl-Break, and the C runtime also routes a closed console window there."""
    return tuple(getattr(signals, name) for name in ("SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signals, name))


STOP_SIGNALS = stop_signals()


# --- the child's environment and program ------------------------------------------------------


def add_utf8(env: dict[str, str]) -> None:
    """Python children write UTF-8: their stdout is ftw's log, read back as UTF-8, and on Windows a
    redirected stdout would otherwise use the ANSI code page and fail on Russian or Kazakh text.
    PYTHONUTF8 yields to a user who turned UTF-8 mode off; the log's encoding is ftw's to choose."""
    env.setdefault("PYTHONUTF8", "1")
    env["PYTHONIOENCODING"] = "utf-8"


def find_program(name: str, env: dict[str, str]) -> str:
    """A bare program name (llamafactory-cli, cmake) as the path the child's PATH finds: Windows
    searches only ftw's own PATH for it, not the venv-first one the child gets, and finds `.exe` this way."""
    if os.path.dirname(name):
        return name
    found = shutil.which(name, path=env.get("PATH"))
    if found is None:
        raise FtwError(
            f"{name} was not found on PATH (ftw's venv, {Path(sys.executable).parent}, is searched first). "
            f"Install it there or put it on PATH; ftw's own tools (llamafactory-cli) install with: "
            f"{sys.executable} -m pip install -r requirements.txt"
        )
    return found


# --- a port to listen on -----------------------------------------------------------------------


def exclusive_bind_option() -> tuple[int, int]:
    """The socket option a server sets before it binds, for a probe that must fail where the port is in use:
    SO_REUSEADDR on POSIX (a port in TIME_WAIT is free); on Windows SO_REUSEADDR would let the probe bind
    a port another server holds, so SO_EXCLUSIVEADDRUSE."""
    if sys.platform == "win32":
        return socket.SOL_SOCKET, SO_EXCLUSIVEADDRUSE
    return socket.SOL_SOCKET, socket.SO_REUSEADDR


# ---- names and places -----------------------------------------------------------------------------


def is_windows() -> bool:
    return sys.platform == "win32"


def exe_name(name: str) -> str:
    """A program's file name: Windows runs only files with an extension it knows, here `.exe`."""
    return f"{name}.exe" if is_windows() else name


def venv_bin_dir() -> Path:
    """Where the venv's console scripts and the programs PyPI packages ship land: Scripts\\ on Windows."""
    return Path(sys.prefix) / "Scripts" if is_windows() else Path(sys.executable).parent


def vswhere() -> Path:
    """The Visual Studio installer's locator, at this place for every edition since VS 2017 (Windows
    reads environment names in any case; Python keeps them upper-case there)."""
    program_files = os.environ.get("PROGRAMFILES(X86)", r"C:\Program Files (x86)")
    return Path(program_files) / "Microsoft Visual Studio" / "Installer" / "vswhere.exe"


def msvc_found() -> bool:
    """MSVC on Windows: `cl` on PATH (a Developer prompt), or an installed Visual Studio, which CMake's
    Visual Studio generator finds without PATH."""
    return is_windows() and (shutil.which("cl") is not None or vswhere().is_file())


# ---- paths given to llama.cpp's programs ---------------------------------------------------------


def tool_path_arg(path: PurePath | str, cwd: PurePath | str) -> str:
    """A file as one of llama.cpp's C++ programs (llama-quantize, -imatrix, -perplexity, -server) is told
    it, run in `cwd`. POSIX: the path unchanged. Windows: those programs get argv in the ANSI code page, so
    a path with Cyrillic or Kazakh letters reaches fopen mangled (ggml-org/llama.cpp#18571). ftw's run
    and file names are ASCII (paths.RUN_NAME), so only the folders above can hold such letters: the path
    relative to `cwd` where that is ASCII, else the absolute path where that is, else the absolute path
    with a note (no ASCII path to it exists from here)."""
    if not is_windows():
        return str(path)
    absolute = ntpath.abspath(path)  # ntpath is os.path on Windows; named so that Linux tests take this branch
    try:
        relative = ntpath.relpath(absolute, cwd)
    except ValueError:  # another drive: no relative path exists
        relative = absolute
    for candidate in (relative, absolute):
        if candidate.isascii():
            return candidate
    step(
        f"note: {absolute} has letters outside ASCII, which llama.cpp's programs on Windows can't open "
        f"(ggml-org/llama.cpp#18571); if it fails to open, move it under a folder with a Latin-letter name"
    )
    return absolute


@dataclass(frozen=True)
class ToolFolder:
    """The folder one of llama.cpp's programs runs in (the run's folder it writes into or reads from) and
    the paths it is given from there (tool_path_arg). On POSIX it keeps ftw's folder and gets every path as it is."""

    folder: Path

    def arg(self, path: PurePath) -> str:
        return tool_path_arg(path, self.folder)

    @property
    def cwd(self) -> Path | None:
        """subprocess's cwd: the folder on Windows, where the paths are relative to it; None (ftw's) elsewhere."""
        return self.folder if is_windows() else None


# ---- what trains where ---------------------------------------------------------------------------

NO_LIGER = (
    "Liger's fused kernels are Linux only (liger-kernel needs triton, which has no Windows build): "
    "planned and trained without them (wrapper/core/platform.py)"
)
NO_SEVERAL_GPUS = (
    "several GPUs or processes (NAMExN) are Linux only: NCCL and DeepSpeed have no Windows build, "
    "and torch.distributed there is gloo only"
)


def liger_available() -> bool:
    """liger-kernel is installed where triton is (requirements.txt's marker): not on Windows."""
    return not is_windows()


def several_processes_available() -> bool:
    """Training on several GPUs (or cpuxN processes) through torchrun and DeepSpeed: not on Windows."""
    return not is_windows()
