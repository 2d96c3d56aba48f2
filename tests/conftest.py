"""Shared test helpers: run the real `ftw` CLI against a temporary runs folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wrapper.core.cpu import FAST_BF16_ENV

REPO = Path(__file__).resolve().parent.parent
FTW = [sys.executable, "-m", "wrapper.cli"]

# Every training in the tests computes in float32, whatever this CPU offers: the suite takes the same time
# and trains the same weights on every machine (where bfloat16 is slow, it would take hours). The choice
# itself is tested with the detection set each way (tests/test_compute_dtype.py).
os.environ[FAST_BF16_ENV] = "0"


# Set for the shared demo run: no artifact of it may contain this (tests/test_pipeline.py).
FAKE_HF_TOKEN = "hf_ftwFakeTokenNeverWrittenAnywhere0123"


def run_ftw(
    runs_dir: Path, *args: str, check: bool = True, timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, FTW_RUNS_DIR=str(runs_dir), COLUMNS="200", **(env or {}))
    result = subprocess.run([*FTW, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"ftw {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def pytest_collection_modifyitems(items) -> None:
    """Everything that reads the shared demo run is slow (it trains, merges and converts once per session).

    Under `pytest -n N --dist loadgroup` (make test), a group runs in one worker: the tests that read the
    shared demo run form one group, so it is built once; every other module is a group of its own, so
    its module-scoped fixtures are too."""
    for item in items:
        if "demo_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("demo_run"))
        else:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv("FTW_RUNS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One real run of the demo recipe (train, merge, GGUF, Modelfile), shared by every test
    that only reads it: about 3 minutes of CPU, paid once per test session. Its folder's
    path has a space and Cyrillic letters."""
    # Spaces and non-ASCII letters in the path, as in a user's home folder: every stage must cope.
    runs_dir = tmp_path_factory.mktemp("demo") / "мои прогоны" / "runs"
    secret = {"HF_TOKEN": FAKE_HF_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_HF_TOKEN}
    run_ftw(runs_dir, "render", "--recipe", "demo", "--profile", "cpu", "--run", "e2e", env=secret)
    for stage in ("train", "export", "gguf", "modelfile"):
        extra = ("--keep-intermediates",) if stage == "gguf" else ()  # the tests compare merged, f16 and Q4_K_M
        run_ftw(runs_dir, stage, "--run", "e2e", *extra, env=secret)
    return runs_dir / "e2e"


def copy_run(run: Path, runs_dir: Path) -> Path:
    """A copy of `run` under another runs folder, its manifest's paths pointed at the copy."""
    copy = runs_dir / run.name
    shutil.copytree(run, copy, symlinks=True)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(str(run), str(copy)), encoding="utf-8")
    return copy
