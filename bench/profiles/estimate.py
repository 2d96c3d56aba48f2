"""The grid: which cells run, each one's rough GPU seconds, and the parts of about equal time that
--part K/N runs (a part is one device slot)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from wrapper.config import planner
from wrapper.config.profiles import load_profile
from wrapper.config.recipes import load_recipe
from wrapper.train.plan_report import max_context_report
from wrapper.train.render import tuned_args

from .inputs import model_config_for, shipped_recipe_for
from .settings import (
    KIND_GROUPS,
    KIND_LABELS,
    MAX_CONTEXT_ACCUM,
    MAX_CONTEXT_PLUS,
    MAX_CONTEXT_ROWS,
    MAX_CONTEXT_STEPS,
    SMOKE_MAX_CONTEXT,
    SMOKE_STEPS,
    example_config,
)

# Rough seconds of a cell on a GPU, for --part and --list (the measured ones are each cell's wall_s):
# process start, imports and loading the 8B random model (QLoRA quantizes it while loading),
# the warm-up step's kernel compilation, then the steps at an assumed MFU of a reference GPU.
ESTIMATE_PEAK_TFLOPS = 989.0  # H100 SXM, dense bf16
ESTIMATE_MFU = {"qlora": 0.15, "lora": 0.25, "full": 0.25}
ESTIMATE_LOAD_S = {"qlora": 50.0, "lora": 35.0, "full": 35.0}
ESTIMATE_FIRST_STEP_S = 10.0
ESTIMATE_TOKENIZE_TOKENS_PER_S = 200_000.0
ESTIMATE_TOKENIZERS_S = 60.0  # llama.cpp vocabulary to tokenizer.json (tests/support/models.py), side by side
ESTIMATE_MODEL_S = 100.0  # a random 8B model built on the GPU and saved (16 GB), each
ESTIMATE_RENDERS_S = 15.0
SLOT_S = 540.0  # a 10-minute device slot, less a minute for starting and copying back


@dataclass
class CellSpec:
    """One cell to run: which kind, model and profile, at which cutoff, for how many steps."""

    kind: str  # ftw | llamafactory-example | max_context | max_context_plus10
    hub: str
    profile: str
    cutoff: int
    steps: int
    rows: int  # of the synthetic dataset at this cutoff
    context: dict | None = None  # max-context cells: the planner's answer (longest_context)
    error: str | None = None  # a max-context cell whose planner fits no cutoff at all

    @property
    def label(self) -> str:
        return f"{KIND_LABELS.get(self.kind, self.kind)} {self.hub} {self.profile}"


def longest_context(recipe: str, profile_name: str, clamp: int | None = None) -> dict:
    """The planner's longest cutoff_len for the recipe on the profile, as `ftw plan --max-context
    --profile P` reports it: at micro-batch 1 with checkpoints offloaded to host RAM, over the
    methods it may train with (the recipe's, and QLoRA where the recipe is LoRA); the longest wins,
    the recipe's own method on a tie. `clamp` (--cpu-smoke) shortens what is trained, not the answer."""
    report = max_context_report(recipe, profile_name, [])
    rows = report["profiles"]
    row = max(enumerate(rows), key=lambda pair: (pair[1]["with_offload"], -pair[0]))[1]
    longest = int(row["with_offload"])
    cutoff = min(longest, clamp) if clamp else longest
    return {
        "planner_longest_cutoff": longest,
        "planner_longest_without_offload": int(row["without_offload"]),
        "planner_longest_method": row["method"],
        "planner_longest_host_ram_gb": row["host_ram_gb_with_offload"],
        "model_context": report["model_context"],
        "max_context_rows": rows,
        "cutoff": cutoff,
        "smoke_clamped_to": clamp if clamp and cutoff != longest else None,
    }


def plus_cutoff(cutoff: int) -> int:
    return int(cutoff * (1 + MAX_CONTEXT_PLUS))


def cell_specs(options, contexts: dict | None = None) -> list[CellSpec]:
    """The selected cells in a fixed order (model, then kind group, then profile): a part of
    --part K/N is a contiguous run of it, so it prepares as few models as it can."""
    contexts = {} if contexts is None else contexts
    rows = max(64, (options.steps + 1) * 16)  # more rows than the steps consume at 8-16 rows a step
    context_steps = SMOKE_STEPS if options.cpu_smoke else MAX_CONTEXT_STEPS
    specs = []
    for hub in options.models:
        for group, kinds in KIND_GROUPS.items():
            if group not in options.kinds:
                continue
            for profile in options.profiles:
                for kind in kinds:
                    if group != "max-context":
                        specs.append(CellSpec(kind, hub, profile, options.cutoff, options.steps, rows))
                        continue
                    if (hub, profile) not in contexts:  # the shipped recipe: same shapes as the bench's copy
                        clamp = SMOKE_MAX_CONTEXT if options.cpu_smoke else None
                        contexts[(hub, profile)] = longest_context(str(shipped_recipe_for(hub)), profile, clamp)
                    context = contexts[(hub, profile)]
                    cutoff = context["cutoff"] if kind == "max_context" else plus_cutoff(context["cutoff"])
                    spec = CellSpec(kind, hub, profile, cutoff, context_steps, MAX_CONTEXT_ROWS, context)
                    if not context["planner_longest_cutoff"]:
                        spec.error = f"the planner fits no cutoff_len at all for {hub} on {profile}"
                    specs.append(spec)
    return specs


def estimate(spec: CellSpec, peak_tflops: float):
    """(rough seconds of the cell on a GPU, the planner's settings for it)."""
    shape = planner.ModelShape.from_config(model_config_for(spec.hub, smoke=False))
    if spec.kind == "llamafactory-example":
        args = dict(example_config()[0], cutoff_len=spec.cutoff)
        settings = planner.settings_from_args(args, "qlora", 1)
    else:
        recipe = load_recipe(str(shipped_recipe_for(spec.hub)))
        profile = load_profile(spec.profile)
        args, _ = tuned_args(recipe, profile)
        args["cutoff_len"] = spec.cutoff
        if spec.kind == "ftw":
            settings = planner.plan_for_profile(shape, args, recipe.method, profile, set()).settings
        else:
            method = spec.context["planner_longest_method"] if spec.context else recipe.method
            settings = replace(
                planner.settings_from_args(args, method, 1),
                micro_batch=1,
                grad_accum=MAX_CONTEXT_ACCUM,
                checkpointing=True,
                offload_checkpoints=True,
            )
    tokens = settings.tokens_per_step
    step_s = tokens * (
        planner.train_flops_per_token(shape, settings) / (peak_tflops * 1e12 * ESTIMATE_MFU[settings.method])
        + planner.offload_seconds_per_token(shape, settings)
    )
    seconds = (
        ESTIMATE_LOAD_S[settings.method]
        + spec.rows * 2 * spec.cutoff / ESTIMATE_TOKENIZE_TOKENS_PER_S
        + ESTIMATE_FIRST_STEP_S
        + spec.steps * step_s
    )
    return seconds, settings


def prepare_estimate(hubs: set[str]) -> float:
    """A bare machine: tokenizers, one random model per model, the renders."""
    return (ESTIMATE_TOKENIZERS_S + ESTIMATE_MODEL_S * len(hubs) + ESTIMATE_RENDERS_S) if hubs else 0.0


def part_seconds(specs: list[CellSpec], seconds: list[float], indices: list[int]) -> float:
    return prepare_estimate({specs[i].hub for i in indices}) + sum(seconds[i] for i in indices)


def split_parts(specs: list[CellSpec], seconds: list[float], count: int) -> list[list[int]]:
    """`count` contiguous parts of the cells (some maybe empty) whose longest estimated time,
    preparing their models included, is as short as it can be: the smallest cap at which
    packing each part as full as the cap allows needs at most `count` parts."""

    def pack(cap: float) -> list[list[int]]:
        parts, current = [], []
        for index in range(len(specs)):
            if current and part_seconds(specs, seconds, current + [index]) > cap:
                parts.append(current)
                current = []
            current.append(index)
        return parts + ([current] if current else [])

    if not specs:
        return [[] for _ in range(count)]
    low = max(part_seconds(specs, seconds, [i]) for i in range(len(specs)))
    high = part_seconds(specs, seconds, list(range(len(specs))))
    if len(pack(low)) > count:
        while high - low > 0.5:  # pack(high) fits in count parts, pack(low) does not
            middle = (low + high) / 2
            low, high = (low, middle) if len(pack(middle)) <= count else (middle, high)
    else:
        high = low
    parts = pack(high)
    return parts + [[] for _ in range(count - len(parts))]


def parts_for_slot(specs: list[CellSpec], seconds: list[float], slot: float) -> int:
    """The fewest parts whose estimated times are each within the slot (or one per cell)."""
    for count in range(1, len(specs) + 1):
        parts = split_parts(specs, seconds, count)
        if max(part_seconds(specs, seconds, part) for part in parts) <= slot:
            return count
    return max(1, len(specs))


def print_estimates(con, specs, seconds, settings, parts, part: int | None, peak: float) -> None:
    from rich.table import Table

    count = len(parts)
    table = Table(
        title=f"cells and rough GPU seconds (a {peak:g} TFLOP/s bf16 GPU; preparing a bare machine included per part)"
    )
    for column in ("part", "kind", "model", "profile", "method", "micro×acc", "cutoff", "offload", "steps", "est. s"):
        table.add_column(column, justify="left" if column in ("kind", "model", "profile", "method") else "right")
    for number, indices in enumerate(parts, 1):
        if part and number != part:
            continue
        for i in indices:
            spec, s = specs[i], settings[i]
            table.add_row(
                f"{number}/{count}",
                KIND_LABELS[spec.kind],
                spec.hub.split("/")[-1],
                spec.profile,
                s.method,
                f"{s.micro_batch}×{s.grad_accum}",
                f"{spec.cutoff:,}",
                "host RAM" if s.checkpointing and s.offload_checkpoints else "—",
                str(spec.steps),
                f"{seconds[i]:.0f}",
            )
    con.print(table)
    for number, indices in enumerate(parts, 1):
        if part and number != part:
            continue
        hubs = {specs[i].hub for i in indices}
        con.print(
            f"  part {number}/{count}: {len(indices)} cell(s), ~{part_seconds(specs, seconds, indices):.0f} s "
            f"(of which ~{prepare_estimate(hubs):.0f} s preparing {len(hubs)} model(s) on a bare machine)"
        )
