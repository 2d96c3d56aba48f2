"""bench/profiles.py: its whole plumbing on the CPU (--cpu-smoke), and the pieces a GPU run relies on."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from fixtures import qwen2_tokenizer_dir

# Real conversions, quantizations or training runs: minutes (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow

SCRIPT = REPO / "bench" / "profiles.py"
CELL_KEYS = {
    "kind",
    "model",
    "profile",
    "method",
    "fits",
    "oom",
    "peak_allocated_gb",
    "peak_reserved_gb",
    "planner_peak_gb",
    "planner_error",
    "tokens_per_s",
    "mfu",
    "steps",
    "tokens_per_step",
    "micro_batch",
    "grad_accum",
    "sample_tokens",
    "memory_gb",
    "command",
    "log",
    "train_yaml",
}
TOP_KEYS = {"command", "gpu", "peak_bf16_tflops", "torch", "llamafactory", "transformers", "cells", "targets"}


def load_script():
    spec = importlib.util.spec_from_file_location("bench_profiles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_runs_both_kinds(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    # The Qwen2 tokenizer takes ~50 s to rebuild from llama.cpp's GGUF; the test fixtures keep one built.
    shutil.copytree(qwen2_tokenizer_dir(), cache / "tokenizers" / "qwen2")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--cache", str(cache), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "tokens/s" in done.stdout and "cpu-smoke" in done.stdout

    data = json.loads((out / "profiles-cpu-smoke.json").read_text(encoding="utf-8"))
    assert set(data) >= TOP_KEYS, TOP_KEYS - set(data)
    assert data["smoke"] is True and "--cpu-smoke" in data["command"]
    assert set(data["targets"]) == {"fit_within_92pct", "speedup_vs_example", "planner_within_15pct"}
    cells = {cell["kind"]: cell for cell in data["cells"]}
    assert set(cells) == {"ftw", "llamafactory-example"}
    for kind, cell in cells.items():
        assert set(cell) >= CELL_KEYS, (kind, CELL_KEYS - set(cell))
        assert cell["fits"] is True and cell["oom"] is False and cell["error"] is None, cell
        assert cell["model"] == "smoke:Qwen/Qwen3-8B"  # never a hub id: planner.measured_mfu skips it
        # every synthetic row is truncated at the cutoff, so tokens per step are exact
        assert cell["sample_tokens"]["min"] == cell["sample_tokens"]["max"] == cell["cutoff"]
        assert cell["tokens_per_step"] == cell["micro_batch"] * cell["grad_accum"] * cell["cutoff"]
        assert cell["timed_steps"] == cell["steps"] - 1 and cell["tokens_per_s"] > 0
        assert cell["planner_peak_gb"] > 0 and cell["flops_per_token"] > 0
    ftw, example = cells["ftw"], cells["llamafactory-example"]
    assert ftw["recipe"] == "recipes/qwen3-8b.yaml" and ftw["render_command"].startswith("ftw render ")
    assert ftw["planner_settings"]["lora_rank"] == 16  # the shipped recipe's, not a bench default
    assert example["method"] == "qlora" and example["settings"]["quantization_bit"] == 4
    assert {"model_name_or_path", "dataset", "output_dir", "max_steps"} <= set(example["swapped_keys"])
    assert not (REPO / "bench" / "results" / "profiles-cpu-smoke.json").exists()


def test_embedded_example_is_llamafactorys():
    bench = load_script()
    shared = [path for path in bench.EXAMPLE_CANDIDATES if path.is_file()]
    if not shared:
        pytest.skip("no shared copy of LLaMA-Factory's examples here")
    assert bench.load_yaml_like_llamafactory(shared[0]) == bench.EMBEDDED_EXAMPLE


def test_gpu_names_peaks_and_targets():
    bench = load_script()
    assert bench.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989
    assert bench.peak_tflops_for("NVIDIA H100 PCIe") == 756
    assert bench.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312
    assert bench.peak_tflops_for("NVIDIA GeForce RTX 4090") == 165.2
    assert bench.peak_tflops_for("Some Future GPU") is None
    assert bench.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"

    def cell(kind, profile, tps, fits=True, oom=False, frac=0.8, err=0.05):
        return {
            "kind": kind,
            "model": "m",
            "profile": profile,
            "tokens_per_s": tps,
            "fits": fits,
            "oom": oom,
            "budget_fraction": frac,
            "within_92pct": fits and frac <= 0.92,
            "planner_error": err,
            "planner_within_15pct": abs(err) <= 0.15,
            "peak_reserved_gb": 1.0,
            "planner_peak_gb": 1.0,
        }

    targets = bench.targets(
        [
            cell("ftw", "a", 300),
            cell("llamafactory-example", "a", 100),
            cell("ftw", "b", 120),
            cell("llamafactory-example", "b", None, fits=False, oom=True),
        ]
    )
    pairs = {p["profile"]: p for p in targets["speedup_vs_example"]["pairs"]}
    assert pairs["a"]["speedup"] == 3.0 and pairs["a"]["met"] is True
    assert pairs["b"]["met"] is True and pairs["b"]["example_oom"] is True  # the example does not fit at all
    assert targets["fit_within_92pct"]["met"] is True
    assert len(targets["planner_within_15pct"]["cells"]) == 3  # OOM cells have no peak to compare
    slow = bench.targets([cell("ftw", "a", 120, frac=0.95), cell("llamafactory-example", "a", 100)])
    assert slow["speedup_vs_example"]["met"] is False and slow["fit_within_92pct"]["met"] is False
