"""bench/profiles: its whole plumbing on the CPU (--cpu-smoke), and the pieces a GPU run relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.profiles import estimate, report, settings
from bench.profiles.__main__ import parse

from tests.support.runner import REPO

# Real conversions, quantizations or training runs: minutes (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow

BENCH = [sys.executable, "-m", "bench.profiles"]
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
OFFLOAD_KEYS = {"offload_checkpoints", "host_ram_gb"}  # every cell
MAX_CONTEXT_KEYS = {  # max_context and max_context_plus10 cells
    "planner_longest_cutoff",
    "planner_longest_without_offload",
    "planner_longest_method",
    "model_context",
    "max_context_rows",
    "plus",
    "beyond_model_context",
    "planner_fits",
}
TARGETS = {"fit_within_92pct", "speedup_vs_example", "planner_within_15pct", "longest_context_fits"}


def test_cpu_smoke_runs_every_kind(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    # Its tokenizer is the tests' (tests/support/models.py): built once, cached under .cache/test-fixtures.
    done = subprocess.run(
        [*BENCH, "--cpu-smoke", "--cache", str(cache), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        encoding="utf-8",
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "tokens/s" in done.stdout and "cpu-smoke" in done.stdout
    assert "est. s" in done.stdout  # the estimated seconds of each cell, before it runs

    data = json.loads((out / "profiles-cpu-smoke.json").read_text(encoding="utf-8"))
    assert set(data) >= TOP_KEYS, TOP_KEYS - set(data)
    assert data["smoke"] is True and "--cpu-smoke" in data["command"]
    assert set(data["targets"]) == TARGETS
    cells = {cell["kind"]: cell for cell in data["cells"]}
    assert set(cells) == {"ftw", "llamafactory-example", "max_context", "max_context_plus10"}
    for kind, cell in cells.items():
        assert set(cell) >= CELL_KEYS | OFFLOAD_KEYS, (kind, CELL_KEYS | OFFLOAD_KEYS - set(cell))
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
    assert ftw["offload_checkpoints"] is False and ftw["host_ram_gb"] == 0  # a tiny model needs no offload
    assert example["method"] == "qlora" and example["settings"]["quantization_bit"] == 4
    assert example["offload_checkpoints"] is False
    assert {"model_name_or_path", "dataset", "output_dir", "max_steps"} <= set(example["swapped_keys"])

    longest, plus10 = cells["max_context"], cells["max_context_plus10"]
    for cell in (longest, plus10):
        assert set(cell) >= MAX_CONTEXT_KEYS, MAX_CONTEXT_KEYS - set(cell)
        # the planner's answer for the tiny model is its whole context; the smoke trains a short clamp of it
        assert cell["planner_longest_cutoff"] == cell["model_context"] == 4096
        assert cell["smoke_clamped_to"] == 160 and cell["beyond_model_context"] is False
        # rendered as the planner's longest assumes: micro-batch 1, checkpoints offloaded (use_unsloth_gc)
        assert cell["micro_batch"] == 1 and cell["gradient_checkpointing"] is True
        assert cell["offload_checkpoints"] is True and cell["settings"]["use_unsloth_gc"] is True
        assert cell["planner_settings"]["offload_checkpoints"] is True and cell["host_ram_gb"] >= 0
        assert cell["settings"]["cutoff_len"] == cell["cutoff"]
        # the CPU can't run LLaMA-Factory's offloaded checkpointing (its backward copies to "cuda"): dropped, said so
        assert cell["cpu_smoke_overrides"]["use_unsloth_gc"] is False
    assert longest["cutoff"] == 160 and longest["plus"] == 0 and longest["planner_fits"] is True
    assert plus10["cutoff"] == 176 and plus10["plus"] == 0.1
    (row,) = data["targets"]["longest_context_fits"]["cells"]
    assert row["cutoff"] == 160 and row["fits"] is True and row["offload_checkpoints"] is True
    assert row["plus10_cutoff"] == 176 and row["plus10_fits"] is True
    assert row["met"] is None and data["targets"]["longest_context_fits"]["met"] is None  # no GPU: not measured
    assert "use_unsloth_gc: true" in (Path(longest["train_yaml"])).read_text(encoding="utf-8")
    assert not (REPO / "bench" / "results" / "profiles-cpu-smoke.json").exists()


def test_list_prints_cells_estimates_and_parts():
    """--list needs no GPU and builds nothing: the GPU grid, each cell's estimated seconds, its part."""
    done = subprocess.run(
        [*BENCH, "--list", "--kinds", "ftw", "example", "max-context"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        encoding="utf-8",
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "est. s" in out and "longest ctx" in out and "longest +10%" in out and "host RAM" in out
    assert "part 1/" in out and "of at most 540 s" in out

    options = parse(["--kinds", "ftw", "example", "max-context"])
    specs = estimate.cell_specs(options)
    assert len(specs) == 2 * 3 * 4  # 2 models x 3 profiles x (ftw, example, longest, +10%)
    estimates = [estimate.estimate(spec, estimate.ESTIMATE_PEAK_TFLOPS) for spec in specs]
    seconds = [seconds for seconds, _ in estimates]
    assert all(30 < s < 600 for s in seconds), seconds
    # The 8 GB offload cells: on rtx3070 the planner offloads the checkpoints of both 8B models.
    for spec, (_, planned) in zip(specs, estimates):
        if spec.kind == "ftw" and spec.profile == "rtx3070":
            assert planned.offload_checkpoints and planned.checkpointing, spec
        if spec.kind in ("max_context", "max_context_plus10"):
            assert planned.offload_checkpoints and planned.micro_batch == 1
    longest = {(s.hub, s.profile): s.cutoff for s in specs if s.kind == "max_context"}
    for spec in specs:
        if spec.kind == "max_context_plus10":
            assert spec.cutoff == int(longest[(spec.hub, spec.profile)] * 1.1)
    assert longest[("meta-llama/Llama-3.1-8B-Instruct", "rtx3070")] > 2048  # it fits at 2048 with offload

    count = estimate.parts_for_slot(specs, seconds, estimate.SLOT_S)
    parts = estimate.split_parts(specs, seconds, count)
    assert len(parts) == count and sorted(i for part in parts for i in part) == list(range(len(specs)))
    assert all(part == list(range(part[0], part[-1] + 1)) for part in parts if part)  # contiguous
    assert max(estimate.part_seconds(specs, seconds, part) for part in parts) <= estimate.SLOT_S
    assert len(estimate.split_parts(specs, seconds, count + 5)) == count + 5  # the extra parts are empty
    assert estimate.split_parts(specs, seconds, 1) == [list(range(len(specs)))]


def test_embedded_example_is_llamafactorys():
    shared = [path for path in settings.EXAMPLE_CANDIDATES if path.is_file()]
    if not shared:
        pytest.skip("no shared copy of LLaMA-Factory's examples here")
    assert settings.load_yaml_like_llamafactory(shared[0]) == settings.EMBEDDED_EXAMPLE


def test_gpu_names_peaks_and_targets():
    assert settings.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989
    assert settings.peak_tflops_for("NVIDIA H100 PCIe") == 756
    assert settings.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312
    assert settings.peak_tflops_for("NVIDIA GeForce RTX 4090") == 165.2
    assert settings.peak_tflops_for("Some Future GPU") is None
    assert settings.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"

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

    targets = report.targets(
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
    slow = report.targets([cell("ftw", "a", 120, frac=0.95), cell("llamafactory-example", "a", 100)])
    assert slow["speedup_vs_example"]["met"] is False and slow["fit_within_92pct"]["met"] is False
    assert slow["longest_context_fits"]["met"] is None  # no max-context cell: not measured

    def context(kind, cutoff, fits=True, frac=0.85):
        return dict(cell(kind, "a", 50, fits=fits, oom=not fits, frac=frac), cutoff=cutoff, offload_checkpoints=True)

    longest = report.targets([context("max_context", 1000), context("max_context_plus10", 1100, fits=False)])
    (row,) = longest["longest_context_fits"]["cells"]
    assert longest["longest_context_fits"]["met"] is True  # the +10% one not fitting changes nothing
    assert row["plus10_cutoff"] == 1100 and row["plus10_fits"] is False and row["plus10_oom"] is True
    tight = report.targets([context("max_context", 1000, frac=0.97), context("max_context_plus10", 1100)])
    assert tight["longest_context_fits"]["met"] is False  # ran, but past 92% of the card
    assert report.targets([context("max_context", 1000, fits=False)])["longest_context_fits"]["met"] is False
    assert len(longest["planner_within_15pct"]["cells"]) == 1  # max-context cells that ran count there too
