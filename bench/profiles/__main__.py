"""The command line: `python -m bench.profiles` (see bench/profiles/__init__.py and bench/README.md)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wrapper.config.recipes import load_recipe

from . import __doc__ as DESCRIPTION
from .cells import Bench
from .child import run_child
from .estimate import (
    ESTIMATE_PEAK_TFLOPS,
    SLOT_S,
    cell_specs,
    estimate,
    longest_context,
    parts_for_slot,
    plus_cutoff,
    print_estimates,
    split_parts,
)
from .inputs import model_config_for, shipped_recipe_for
from .report import print_table, say, write_results
from .settings import (
    DEFAULT_CACHE,
    DEFAULT_KINDS,
    DEFAULT_MODELS,
    DEFAULT_OUT,
    DEFAULT_PROFILES,
    GIB,
    KIND_GROUPS,
    KIND_LABELS,
    MAX_CONTEXT_ACCUM,
    MAX_CONTEXT_PLUS,
    SMOKE_CUTOFF,
    SMOKE_MAX_CONTEXT,
    SMOKE_MODEL,
    SMOKE_PROFILE,
    SMOKE_STEPS,
    WARMUP_STEPS,
    console,
    gpu_slug,
    now,
    peak_tflops_for,
    versions,
)


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(
        description=DESCRIPTION.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"hub ids in recipes/models.yaml (default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--profiles", nargs="+", default=None, help=f"GPU profiles (default: {' '.join(DEFAULT_PROFILES)})"
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=None,
        choices=list(KIND_GROUPS),
        help="ftw's rendered recipe, LLaMA-Factory's QLoRA example, the planner's longest context and "
        f"+10%% (max-context) (default: {' '.join(DEFAULT_KINDS)}; --cpu-smoke: all)",
    )
    parser.add_argument(
        "--part",
        default=None,
        metavar="K/N",
        help="run only part K of the selected cells cut into N parts of about equal estimated time "
        "(a part is a contiguous run of cells in the order --list shows): one device slot each",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the cells, their estimated GPU seconds and their parts (with --part: that part; "
        f"without: the fewest parts of at most --time-budget or {SLOT_S:g} s each), then exit; needs no GPU",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per cell; the first is warm-up (default 6, smoke {SMOKE_STEPS})",
    )
    parser.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        help="where tokenizers, random models, data and runs are built (default: .cache/bench-profiles)",
    )
    parser.add_argument("--out", default=None, help="results folder (default: bench/results; smoke: a new temp folder)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="this GPU's dense bf16 peak, if not in the table"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="seconds: start no further cell once this much time would be exceeded (e.g. 540 in a "
        "10-minute device slot); results so far are written, exit code 3",
    )
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=300,
        help="seconds before a cell's training process is killed (the longest max-context cells: 420)",
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help=f"no GPU: the whole plumbing with a tiny Qwen3-shaped model, cutoff {SMOKE_CUTOFF}, "
        f"profile {SMOKE_PROFILE}, no memory cap; results in a temp folder",
    )
    options = parser.parse_args(argv)
    options.part_number = options.part_count = None
    if options.part:
        match = re.fullmatch(r"(\d+)/(\d+)", options.part)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            parser.error(f"--part {options.part}: give K/N with 1 <= K <= N, e.g. --part 1/4")
        options.part_number, options.part_count = int(match[1]), int(match[2])
    if options.cpu_smoke:
        options.models = options.models or [SMOKE_MODEL]
        options.profiles = options.profiles or [SMOKE_PROFILE]
        options.kinds = options.kinds or list(KIND_GROUPS)
        options.steps = options.steps or SMOKE_STEPS
        options.cutoff = SMOKE_CUTOFF
        if not options.list:
            options.out = options.out or tempfile.mkdtemp(prefix="bench-profiles-smoke-")
        if options.out and Path(options.out).resolve() == DEFAULT_OUT.resolve():
            parser.error("--cpu-smoke results never go to bench/results (they are not measurements)")
    else:
        options.models = options.models or DEFAULT_MODELS
        options.profiles = options.profiles or DEFAULT_PROFILES
        options.kinds = options.kinds or list(DEFAULT_KINDS)
        options.steps = options.steps or 6
        options.cutoff = 2048
        options.out = options.out or str(DEFAULT_OUT)
    if options.steps < WARMUP_STEPS + 1:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 1} (the first step is warm-up, not timed)")
    return options


def main(argv: list[str]) -> int:
    options = parse(argv)
    argv_run = [sys.executable, "-m", "bench.profiles", *argv]
    command = shlex.join(argv_run)
    con = console()
    started = time.perf_counter()

    # The cells, their rough GPU seconds and the parts: planner arithmetic, no GPU, no model built.
    specs = cell_specs(options)
    estimate_peak = ESTIMATE_PEAK_TFLOPS  # not --peak-tflops: the parts of a --part K/N stay the same everywhere
    estimates = [estimate(spec, estimate_peak) for spec in specs]
    seconds, settings = [e[0] for e in estimates], [e[1] for e in estimates]
    count = options.part_count or (parts_for_slot(specs, seconds, options.time_budget or SLOT_S) if options.list else 1)
    parts = split_parts(specs, seconds, count)
    if options.list:
        print_estimates(con, specs, seconds, settings, parts, options.part_number, estimate_peak)
        if not options.part_count:
            con.print(
                f"{count} part(s) of at most {options.time_budget or SLOT_S:g} s by these estimates: "
                f"--part 1/{count} ... --part {count}/{count}"
            )
        return 0
    chosen = parts[options.part_number - 1] if options.part_number else list(range(len(specs)))
    if not chosen:
        con.print(f"part {options.part} holds no cell (the estimates fit the cells in fewer parts)")
        return 0
    print_estimates(con, specs, seconds, settings, parts, options.part_number, estimate_peak)
    specs = [specs[i] for i in chosen]

    cache = Path(options.cache).resolve()
    options.cache = str(cache)
    hubs = sorted({spec.hub for spec in specs}, key=options.models.index)
    configs = {hub: model_config_for(hub, options.cpu_smoke) for hub in hubs}
    templates = {hub: load_recipe(str(shipped_recipe_for(hub))).model.template for hub in hubs}
    con.print(f"preparing tokenizers and random-weight models in {cache} (cached after the first time)")
    gpu, error, elapsed = run_child(
        "prepare",
        {"cache": str(cache), "smoke": options.cpu_smoke, "models": configs},
        cache / "logs" / "prepare.log",
        timeout=1800,
    )
    if gpu is None or gpu.get("error"):
        con.print(f"[red]error:[/red] {error or gpu['error']}")
        return 2
    con.print(f"  ready in {elapsed:.0f} s: {gpu.get('gpu', 'CPU (smoke)')}")
    peak = options.peak_tflops or (peak_tflops_for(gpu["gpu"]) if gpu.get("cuda") else None)
    if gpu.get("cuda") and peak is None:
        con.print(
            f"[yellow]warning:[/yellow] no dense bf16 peak known for {gpu['gpu']}; MFU is left out (pass --peak-tflops)"
        )

    bench = Bench(options, gpu, peak, command)
    # The longest context asked again of the bench's own recipe copy, on the model it trains: the same
    # shapes as the shipped recipe's on a GPU; the tiny model's under --cpu-smoke.
    contexts: dict = {}
    for spec in specs:
        if spec.context is None:
            continue
        if (spec.hub, spec.profile) not in contexts:
            recipe = bench.recipe_copy(spec.hub, Path(gpu["models"][spec.hub]))
            clamp = SMOKE_MAX_CONTEXT if options.cpu_smoke else None
            contexts[(spec.hub, spec.profile)] = longest_context(str(recipe), spec.profile, clamp)
        spec.context = contexts[(spec.hub, spec.profile)]
        longest = spec.context["cutoff"]
        spec.cutoff = longest if spec.kind == "max_context" else plus_cutoff(longest)
        spec.error = (
            None
            if spec.context["planner_longest_cutoff"]
            else f"the planner fits no cutoff_len at all for {spec.hub} on {spec.profile}"
        )
    for spec in specs:
        bench.dataset(spec.cutoff, spec.rows)
    rendered = {}
    to_render = [spec for spec in specs if spec.kind != "llamafactory-example"]
    if to_render:  # renders need no GPU: all of them side by side, before any training
        con.print(f"rendering {len(to_render)} run(s) with ftw render")
        with ThreadPoolExecutor(max(1, min(4, (os.cpu_count() or 2) // 2))) as pool:
            done = pool.map(lambda spec: bench.render_ftw(spec, Path(gpu["models"][spec.hub])), to_render)
            rendered = {id(spec): result for spec, result in zip(to_render, done)}
    name = "profiles-cpu-smoke.json" if options.cpu_smoke else f"profiles-{gpu_slug(gpu['gpu'])}.json"
    header = {
        "command": command,
        "argv": argv_run,
        "gpu": gpu.get("gpu", "cpu"),
        "gpu_memory_gb": round(gpu["total_memory_bytes"] / GIB, 2) if gpu.get("cuda") else None,
        "compute_capability": gpu.get("compute_capability"),
        "peak_bf16_tflops": peak,
        "smoke": options.cpu_smoke,
        "written_at": now(),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        **versions(),
        "method_notes": {
            "budget": "PyTorch's allocator is capped at the profile's memory_gb GiB with "
            "torch.cuda.set_per_process_memory_fraction in the training process; the CUDA context "
            "and bitsandbytes' paged (managed) memory are outside that cap (device_used_gb shows the "
            "device's used memory at step ends, all of it)",
            "peaks": "peak_*_gb: whole process (model loading and training); train_peak_*_gb: from the first "
            "step on; planner_error compares peak_reserved_gb with the planner's estimate",
            "tokens_per_s": f"steps after {WARMUP_STEPS} warm-up step(s), every sample exactly cutoff tokens, "
            "measured on THIS GPU with the profile's memory cap: the memory verdicts carry over "
            "to the profile's card, the speed does not (compare MFU instead)",
            "mfu": "tokens/s x planner.train_flops_per_token (recompute included under gradient "
            "checkpointing) / this GPU's dense bf16 peak",
            "offload": "offload_checkpoints: the rendered train.yaml's use_unsloth_gc (LLaMA-Factory keeps each "
            "checkpointed layer input in host RAM); host_ram_gb: the planner's estimate of that host RAM",
            "max_context": f"max_context: trained at the planner's longest cutoff_len (ftw plan --max-context "
            f"--profile P: micro-batch 1, checkpoints offloaded), pinned with --set cutoff_len, "
            f"per_device_train_batch_size=1, gradient_accumulation_steps={MAX_CONTEXT_ACCUM} and "
            f"use_unsloth_gc=true; max_context_plus10: the same at +{MAX_CONTEXT_PLUS:.0%}",
        },
    }
    path = Path(options.out) / name
    cells, left, longest, data = [], [], 0.0, None
    for spec in specs:
        elapsed = time.perf_counter() - started
        if options.time_budget and elapsed + longest * 1.2 > options.time_budget:
            left.append(spec)
            continue
        cell_started = time.perf_counter()
        model_dir = Path(gpu["models"][spec.hub])
        cutoff = f" at cutoff {spec.cutoff:,}" if spec.context else ""
        con.print(f"[bold]{KIND_LABELS[spec.kind]}[/bold] {spec.hub} on {spec.profile}{cutoff} ...")
        if spec.kind == "llamafactory-example":
            cells.append(bench.example_cell(spec, model_dir, templates[spec.hub]))
        else:
            cells.append(bench.ftw_cell(*rendered[id(spec)], model_dir))
        longest = max(longest, time.perf_counter() - cell_started)
        say(con, cells[-1])
        data = write_results(path, dict(header, written_at=now()), cells)  # after every cell: a killed run keeps them
    if not cells:
        con.print("[red]error:[/red] no cell ran")
        return 2
    print_table(con, data)
    con.print(f"results: {path}  ({time.perf_counter() - started:.0f} s)")
    if left:
        con.print(
            f"[yellow]--time-budget {options.time_budget:g} s reached; not run:[/yellow] "
            + ", ".join(spec.label for spec in left)
        )
        return 3
    return 0 if all(c.get("fits") is not None for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
