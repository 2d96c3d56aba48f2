"""Fault injection on the real stages: a stopped or crashed child, a full disk, a GPU that is
already busy. Each fault must leave nothing that looks finished, and the re-run must finish.

Conversion and quantization run on a copy of the shared demo run; a stopped training run is
tests/test_multi_process.py's (one run there is stopped, refused and resumed in each mode).
A full disk is a real one: a small tmpfs mounted in a private mount namespace (`unshare -rm`,
no root needed), filled while the converter writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wrapper.core.runlock import LOCKS

from tests.support.runner import FTW, REPO, copy_run, run_ftw, start_ftw

# Real conversions, quantizations or training runs: minutes (`make test-fast` leaves them out). The faults are
# injected the POSIX way (signals, /proc, sh, unshare): on Windows these tests are skipped, not failed.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX fault injection: signals, /proc, sh, unshare"),
]

RUN = "e2e"


def wait_for(condition, what: str, child: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            raise AssertionError(f"ftw ended before {what}:\n{child.stdout.read()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (entry / "stat").read_text(encoding="utf-8").split(") ", 1)[1][0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text(encoding="utf-8"))


def unfinished_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name)


def assert_valid_gguf(path: Path, quant: str) -> None:
    from wrapper.core.gguf_io import ftype_of, verify_gguf

    assert verify_gguf(path, ftype_of(quant)) > 0


# --- training ----------------------------------------------------------------------------


def test_a_checkpoint_cut_off_while_saving_is_dropped_before_resuming(tmp_path):
    from wrapper.train.stage import drop_incomplete_checkpoints

    adapter = tmp_path / "adapter"
    for step, state in ((10, '{"global_step": 10}'), (20, '{"global_st')):
        (adapter / f"checkpoint-{step}").mkdir(parents=True)
        (adapter / f"checkpoint-{step}" / "trainer_state.json").write_text(state, encoding="utf-8")
    (adapter / "checkpoint-30").mkdir()  # killed before anything was written
    kept = drop_incomplete_checkpoints(adapter)
    assert [p.name for p in kept] == ["checkpoint-10"]
    assert sorted(p.name for p in adapter.iterdir()) == ["checkpoint-10"]


# --- conversion and quantization ---------------------------------------------------------


@pytest.fixture
def gguf_run(demo_run, tmp_path) -> Path:
    """A copy of the demo run (merged model kept) without its GGUF files."""
    run = copy_run(demo_run, tmp_path / "runs")
    shutil.rmtree(run / "gguf")
    data = manifest_of(run)
    data["artifacts"] = {k: v for k, v in data["artifacts"].items() if not k.startswith("gguf_")}
    (run / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    return run


def test_stopped_converter_leaves_no_gguf_and_the_rerun_makes_a_valid_one(gguf_run):
    runs_dir, gguf_dir = gguf_run.parent, gguf_run / "gguf"
    partial = gguf_dir / f"{RUN}-f16.gguf.partial"
    child = start_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates")
    wait_for(lambda: partial.is_file() and partial.stat().st_size > 1 << 20, "the converter writing", child)
    child.send_signal(signal.SIGTERM)
    output = child.communicate(timeout=60)[0]
    assert child.returncode == 128 + signal.SIGTERM, output
    assert processes_mentioning(str(gguf_dir)) == [], "the converter outlived ftw"
    assert sorted(p.name for p in gguf_dir.iterdir()) == []
    assert not any(k.startswith("gguf_") for k in manifest_of(gguf_run)["artifacts"])

    run_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates")
    assert_valid_gguf(gguf_dir / f"{RUN}-f16.gguf", "f16")
    assert_valid_gguf(gguf_dir / f"{RUN}-Q4_K_M.gguf", "Q4_K_M")
    assert unfinished_files(gguf_run) == []


def test_ftw_killed_outright_takes_its_converter_down_and_the_rerun_starts_clean(gguf_run):
    """kill -9 leaves ftw no chance to clean up: the child still stops (it gets SIGTERM when its
    parent dies), and what is left is only a .partial file, which the re-run replaces."""
    runs_dir, gguf_dir = gguf_run.parent, gguf_run / "gguf"
    partial = gguf_dir / f"{RUN}-f16.gguf.partial"
    child = start_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates")
    wait_for(lambda: partial.is_file() and partial.stat().st_size > 1 << 20, "the converter writing", child)
    child.kill()
    child.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while processes_mentioning(str(gguf_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(gguf_dir)) == [], "the converter outlived ftw"
    assert not (gguf_dir / f"{RUN}-f16.gguf").exists()

    run_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates")
    assert_valid_gguf(gguf_dir / f"{RUN}-Q4_K_M.gguf", "Q4_K_M")
    assert unfinished_files(gguf_run) == []


def test_crashed_quantizer_leaves_no_file_and_the_rerun_quantizes_only(gguf_run):
    runs_dir, gguf_dir = gguf_run.parent, gguf_run / "gguf"
    partial = gguf_dir / f"{RUN}-Q4_K_M.gguf.partial"
    child = start_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates")
    wait_for(lambda: partial.is_file() and partial.stat().st_size > 0, "the quantizer writing", child)
    quantizers = processes_mentioning(str(partial))
    assert quantizers, "no quantizer process found"
    for pid in quantizers:
        os.kill(pid, signal.SIGKILL)  # a crash: the child dies, ftw lives on and must clean up
    output = child.communicate(timeout=60)[0]
    assert child.returncode == 1, output
    assert "llama.cpp quantize Q4_K_M" in output and "gguf.log" in output
    assert sorted(p.name for p in gguf_dir.iterdir()) == [f"{RUN}-f16.gguf"]
    assert "gguf_q4_k_m" not in manifest_of(gguf_run)["artifacts"]

    rerun = run_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates")
    assert "Converting" not in rerun.stdout, "the f16 GGUF was up to date and must not be made again"
    assert_valid_gguf(gguf_dir / f"{RUN}-Q4_K_M.gguf", "Q4_K_M")


# --- a full disk -------------------------------------------------------------------------


def private_mounts_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_private_mounts = pytest.mark.skipif(
    not private_mounts_work(), reason="unshare -rm (a private mount namespace) is not allowed here"
)

# Mounts a tmpfs of $SIZE on $DIR, runs the command; once $WATCH exists and has data, fills the
# tmpfs (another program taking the space mid-write). Lists $DIR into $LISTING before leaving.
FULL_DISK_SCRIPT = r"""
mount -t tmpfs -o size="$SIZE" tmpfs "$DIR" || exit 99
"$@" & pid=$!
if [ -n "$WATCH" ]; then
  while [ ! -s "$WATCH" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  dd if=/dev/zero of="$DIR/ballast" bs=1M 2>/dev/null
fi
wait "$pid"; rc=$?
ls -A "$DIR" > "$LISTING"
exit "$rc"
"""


def run_on_small_disk(
    folder: Path, size: str, watch: Path | None, runs_dir: Path, argv: list[str], listing: Path
) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        FTW_RUNS_DIR=str(runs_dir),
        COLUMNS="200",
        SIZE=size,
        DIR=str(folder),
        WATCH=str(watch or ""),
        LISTING=str(listing),
    )
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", FULL_DISK_SCRIPT, "sh", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        encoding="utf-8",
    )


@needs_private_mounts
def test_disk_filling_up_mid_conversion_is_a_clean_error_and_nothing_corrupt(gguf_run, tmp_path):
    runs_dir, gguf_dir = gguf_run.parent, gguf_run / "gguf"
    gguf_dir.mkdir()
    listing = tmp_path / "listing.txt"
    manifest_before = manifest_of(gguf_run)
    # 400 MB passes the free-space check (f16 + Q4_K_M of 135 M parameters); then the disk fills up.
    result = run_on_small_disk(
        gguf_dir, "400m", gguf_dir / f"{RUN}-f16.gguf.partial", runs_dir, [*FTW, "gguf", "--run", RUN], listing=listing
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"The disk under {gguf_dir} is full" in output and "gguf.log" in output
    assert "Traceback" not in result.stdout + result.stderr.split("Last lines of the log")[0]
    assert listing.read_text(encoding="utf-8").split() == ["ballast"], "a partial GGUF was left on the full disk"
    assert manifest_of(gguf_run)["artifacts"] == manifest_before["artifacts"]

    run_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates")
    assert_valid_gguf(gguf_dir / f"{RUN}-Q4_K_M.gguf", "Q4_K_M")


@needs_private_mounts
def test_full_disk_while_ftw_writes_its_own_files_is_a_clean_error(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    listing = tmp_path / "listing.txt"
    result = run_on_small_disk(
        runs_dir,
        "8k",
        None,
        runs_dir,
        [*FTW, "render", "--recipe", "demo", "--profile", "cpu", "--run", "full"],
        listing=listing,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the disk is full" in result.stderr and "No space left on device" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert ".partial" not in listing.read_text(encoding="utf-8")


@needs_private_mounts
def test_training_stops_before_starting_when_checkpoints_wont_fit(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    listing = tmp_path / "listing.txt"
    render_then_train = [
        "sh",
        "-c",
        f"{sys.executable} -m wrapper.cli render --recipe demo --profile cpu "
        f"--run small && {sys.executable} -m wrapper.cli train --run small",
    ]
    result = run_on_small_disk(runs_dir, "40m", None, runs_dir, render_then_train, listing=listing)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not enough free disk for ftw train" in result.stderr and "checkpoints" in result.stderr
    assert "GB is free" in result.stderr
    assert [name for name in listing.read_text(encoding="utf-8").split() if name != LOCKS] == [
        "small"
    ]  # beside the runs' locks


# --- a busy GPU --------------------------------------------------------------------------


def test_training_stops_when_the_gpu_has_too_little_free_memory(runs_dir, tmp_path):
    """nvidia-smi can't run here, so a stand-in answers as a 12 GB card with 1 GiB free would."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '1024, 12282'\n", encoding="utf-8")
    smi.chmod(0o755)
    run_ftw(runs_dir, "render", "--recipe", "demo", "--profile", "rtx4070", "--run", "busy")
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    result = run_ftw(runs_dir, "train", "--run", "busy", check=False, env={"PATH": path})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "GPU 0 has 1.0 GiB free of 12.0 GiB (11.0 GiB held by other programs)" in result.stderr
    assert "--ignore-fit" in result.stderr
    assert not (runs_dir / "busy" / "adapter").exists() and not (runs_dir / "busy" / "logs" / "train.log").exists()
