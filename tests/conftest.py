"""The fixtures and pytest hooks of the suite; the helpers they and the tests share are in tests/support/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wrapper.commands.setup import demo_steps
from wrapper.core.cpu import FAST_BF16_ENV

from tests.support.runner import FAKE_HF_TOKEN, run_ftw

# Every training in the tests computes in float32, whatever this CPU offers: the suite takes the same time
# and trains the same weights on every machine (where bfloat16 is slow, it would take hours). The choice
# itself is tested with the detection set each way (tests/test_compute_dtype.py).
os.environ[FAST_BF16_ENV] = "0"


def _keep_to_this_workers_cores() -> None:
    """Under `pytest -n N` (make test), worker gwK runs on its own 1/N of the cores, and so does every
    process it starts: ftw reads its thread counts from the cores it may use (core/cpu.cpu_jobs), so two
    workers' trainings and llama.cpp runs never fight over one core (on 2 cores that fight doubled the
    CPU time of the suite: bench/README.md)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // count)
    first = int(worker.removeprefix("gw")) * share % len(cores)
    mine = cores[first : first + share]
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))  # PyTorch in this process counts all cores otherwise


_keep_to_this_workers_cores()


# Modules that take minutes, longest first: `make test` hands modules to its workers in this order
# (--dist loadfile --no-loadscope-reorder), so that no long one is left to run alone at the end.
# test_pipeline comes first because its first test builds the shared demo run that many others read.
LONGEST_MODULES = (
    "test_pipeline",
    "test_multi_process",
    "test_eval",
    "test_bnb_base",
    "test_faults",
    "test_board",
    "test_gguf_adapter",
    "test_bench_profiles",
    "test_synth_teachers",
    "test_merge",
    "test_fidelity",
    "test_serving_gguf",
    "test_stages",
)


def pytest_collection_modifyitems(items) -> None:
    """Everything that reads the shared demo run is slow (it trains, merges and converts once per session);
    the longest modules run first."""
    for item in items:
        if "demo_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    rank = {name: index for index, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv("FTW_RUNS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One real run of the demo recipe (train, merge, GGUF, Modelfile), shared by every test
    that only reads it: about 3 minutes of CPU, paid once per test session, by whichever
    pytest-xdist worker asks first (the others wait for it). Its folder's path has a space and
    Cyrillic letters."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one folder for all workers
    # Spaces and non-ASCII letters in the path, as in a user's home folder: every stage must cope.
    runs_dir = shared / "demo" / "мои прогоны" / "runs"
    finished = shared / "demo" / "finished"
    with FileLock(shared / "demo.lock"):
        if not finished.exists():
            if runs_dir.exists():
                pytest.fail(f"building the shared demo run failed in another worker: {runs_dir}")
            _build_demo_run(runs_dir)
            finished.touch()
    return runs_dir / "e2e"


# The demo's own steps (`ftw demo`) up to the Modelfile: the knowledge split, training, merged weights, f16 and
# Q4_K_M GGUFs kept (the tests compare them). Smoke, answers and eval are tested on copies of this run.
DEMO_RUN_COMMANDS = {"data", "render", "train", "export", "gguf", "modelfile"}


def _build_demo_run(runs_dir: Path) -> None:
    secret = {"HF_TOKEN": FAKE_HF_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_HF_TOKEN}
    for argv in demo_steps("e2e"):
        if argv[0] in DEMO_RUN_COMMANDS:
            run_ftw(runs_dir, *argv, env=secret)
