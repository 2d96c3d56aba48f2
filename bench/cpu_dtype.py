"""Benchmark: training on a CPU in float32 against bfloat16, side by side in one run (#24).

Two measurements, each in a fresh process:

  matmul  the 576x1536x256 matmul of SmolLM2-135M's MLP (batch 4 x 64 tokens) in float32, bfloat16 and
          float16, best of a few repeats, as GFLOP/s: where the CPU has no fast bfloat16, PyTorch falls
          back to a reference gemm for both half types
  demo    `ftw render` + `ftw train` of the demo recipe on the cpu profile with model.cpu_dtype forced
          to each dtype: seconds per step (from LLaMA-Factory's trainer_log.jsonl), the whole training,
          and the dtype transformers reports loading the base in (train.log); with --checkpointing,
          each dtype also with gradient checkpointing on (LLaMA-Factory's default, which the cpu
          profile turns off)

The CPU's flags (avx512*, amx*) and model name are recorded with the results, since the answer
depends on them. Writes bench/results/cpu_dtype-<cpu>.json and prints a Markdown table.

--emulate-avx2 runs both measurements as on a CPU with AVX2 and no AVX-512 or AMX: oneDNN, MKL and
PyTorch's own kernels are capped at AVX2 (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS,
ATEN_CPU_CAPABILITY), so bfloat16 takes the reference gemm as it does there. It is a stand-in for
such a CPU, not one: its float32 is still this CPU's cores at AVX2.

    .venv/bin/python bench/cpu_dtype.py                    # both dtypes, the whole demo training (~2 x 2-3 min
                                                           # where bfloat16 is fast; see README for slow CPUs)
    .venv/bin/python bench/cpu_dtype.py --max-steps 4      # where bfloat16 is slow: a few steps are enough
    .venv/bin/python bench/cpu_dtype.py --emulate-avx2 --max-steps 4
    .venv/bin/python bench/cpu_dtype.py --emulate-avx2 --max-steps 8 --dtypes float32 --checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repo_path import REPO

from wrapper.core.cpu import FAST_BF16_ENV

from tests.support.runner import run_ftw

RESULTS_DIR = REPO / "bench" / "results"
DTYPES = ("float32", "bfloat16")
# Caps every CPU kernel library PyTorch uses at AVX2: a CPU without AVX-512 or AMX, as far as they can tell.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

MATMUL = """
import json, sys, time
import torch
m, k, n = 576, 1536, 256
out = {}
for name in ("float32", "bfloat16", "float16"):
    dtype = getattr(torch, name)
    a, b = torch.randn(n, k).to(dtype), torch.randn(k, m).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(int(sys.argv[1])):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    out[name] = round(2 * m * k * n / best / 1e9, 2)
out["threads"] = torch.get_num_threads()
out["torch"] = torch.__version__
out["kernels"] = torch.backends.cpu.get_cpu_capability()
print(json.dumps(out))
"""


def cpu_description() -> dict:
    from wrapper.core.cpu import CPUINFO, bf16_support

    text = CPUINFO.read_text(encoding="utf-8") if CPUINFO.is_file() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    wide = sorted({f for f in (flags.group(1).split() if flags else []) if f.startswith(("avx512", "amx", "avx2"))})
    support = bf16_support()
    return {
        "model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "flags": wide,
        "fast_bf16": support.fast,
        "evidence": support.evidence,
    }


def matmul(repeats: int) -> dict:
    result = subprocess.run([sys.executable, "-c", MATMUL, str(repeats)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def ftw(runs_dir: Path, *args: str) -> float:
    started = time.perf_counter()
    run_ftw(runs_dir, *args, timeout=None, env={FAST_BF16_ENV: None})  # the recipe key decides, as a user's would
    return time.perf_counter() - started


def train_demo(runs_dir: Path, dtype: str, max_steps: int | None, checkpointing: bool = False) -> dict:
    run = f"dtype-{dtype}" + ("-checkpointing" if checkpointing else "")
    overrides = ["--set", f"model.cpu_dtype={dtype}"]
    overrides += ["--set", f"train.disable_gradient_checkpointing={str(not checkpointing).lower()}"]
    if max_steps:
        overrides += ["--set", f"train.max_steps={max_steps}"]
    ftw(runs_dir, "render", "--recipe", "demo", "--profile", "cpu", "--run", run, *overrides)
    seconds = ftw(runs_dir, "train", "--run", run)
    entries = [
        json.loads(line)
        for line in (runs_dir / run / "adapter" / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    steps = [e for e in entries if "current_steps" in e and "elapsed_time" in e]
    log = (runs_dir / run / "logs" / "train.log").read_text(encoding="utf-8", errors="replace")
    loaded = re.search(r"Will use dtype=(torch\.\w+)", log)
    last = steps[-1]
    # elapsed_time is "H:MM:SS" since the trainer started; the first step carries the warm-up
    h, m, s = (int(x) for x in last["elapsed_time"].split(":"))
    trainer_seconds = h * 3600 + m * 60 + s
    return {
        "dtype": dtype,
        "gradient_checkpointing": "Gradient checkpointing enabled" in log,
        "steps": last["current_steps"],
        "final_loss": next((e["loss"] for e in reversed(entries) if "loss" in e), None),
        "trainer_seconds": trainer_seconds,
        "seconds_per_step": round(trainer_seconds / max(1, last["current_steps"]), 2),
        "ftw_train_seconds": round(seconds, 1),
        "transformers_loaded": loaded.group(1) if loaded else None,
    }


def table(results: dict) -> str:
    mm = results["matmul"]
    lines = [
        f"CPU: {results['cpu']['model']}, {results['cpu']['cores']} cores; "
        f"flags: {' '.join(results['cpu']['flags']) or '(no avx2/avx512/amx)'}; fast bfloat16: "
        f"{results['cpu']['fast_bf16']} ({results['cpu']['evidence']})",
        "",
        f"576x1536x256 matmul: float32 {mm['float32']} GFLOP/s, bfloat16 {mm['bfloat16']}, float16 {mm['float16']} "
        f"({mm['threads']} threads, {mm['kernels']} kernels, torch {mm['torch']})"
        + (
            " — emulated AVX2-only: " + " ".join(f"{k}={v}" for k, v in results["emulated"].items())
            if results["emulated"]
            else ""
        ),
        "",
        "| base computed in | loaded as (train.log) | gradient checkpointing | steps | s/step | training "
        "| `ftw train` wall | final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["demo"]:
        lines.append(
            f"| {row['dtype']} | {row['transformers_loaded']} | {'on' if row.get('gradient_checkpointing') else 'off'} "
            f"| {row['steps']} | {row['seconds_per_step']} | "
            f"{row['trainer_seconds']} s | {row['ftw_train_seconds']} s | {row['final_loss']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=None, help="train only N steps of each (slow CPUs)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--emulate-avx2", action="store_true", help="cap PyTorch's kernels at AVX2 (see above)")
    parser.add_argument("--checkpointing", action="store_true", help="also train each dtype with it on")
    args = parser.parse_args()

    if args.emulate_avx2:
        os.environ.update(AVX2_ONLY)
    results = {
        "command": " ".join(["bench/cpu_dtype.py", *sys.argv[1:]]),
        "cpu": cpu_description(),
        "emulated": AVX2_ONLY if args.emulate_avx2 else None,
        "matmul": matmul(args.repeats),
        "demo": [],
    }
    with tempfile.TemporaryDirectory(prefix="ftw-cpu-dtype-") as tmp:
        for dtype in args.dtypes:
            for checkpointing in (False, True) if args.checkpointing else (False,):
                results["demo"].append(train_demo(Path(tmp) / "runs", dtype, args.max_steps, checkpointing))
    name = "amx" if "amx_bf16" in results["cpu"]["flags"] else ("avx512" if results["cpu"]["fast_bf16"] else "nobf16")
    name += "-as-avx2" if args.emulate_avx2 else ""
    name += "-checkpointing" if args.checkpointing else ""
    out = args.out or RESULTS_DIR / f"cpu_dtype-{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
