"""The results file (merged with the cells already there), the targets it is judged by, and the tables."""

from __future__ import annotations

import json
from pathlib import Path

from wrapper.core.fsutil import write_text_atomic

from .settings import FIT_TARGET, KIND_LABELS, PLANNER_TOLERANCE, SPEEDUP_TARGET


def cell_key(cell: dict) -> tuple:
    return cell["kind"], cell["model"], cell["profile"]


def targets(cells: list[dict]) -> dict:
    ftw = [c for c in cells if c["kind"] == "ftw"]
    example = {(c["model"], c["profile"]): c for c in cells if c["kind"] == "llamafactory-example"}

    def verdict(items: list[bool | None]) -> bool | None:
        return None if not items or any(i is None for i in items) else all(items)

    fit_rows = [
        {
            "model": c["model"],
            "profile": c["profile"],
            "fits": c.get("fits"),
            "budget_fraction": c.get("budget_fraction"),
            "offload_checkpoints": c.get("offload_checkpoints"),
            "host_ram_gb": c.get("host_ram_gb"),
            "met": c.get("within_92pct"),
        }
        for c in ftw
    ]
    speed_rows = []
    for c in ftw:
        base = example.get((c["model"], c["profile"]))
        row = {
            "model": c["model"],
            "profile": c["profile"],
            "ftw_tokens_per_s": c.get("tokens_per_s"),
            "example_tokens_per_s": base.get("tokens_per_s") if base else None,
            "example_oom": base.get("oom") if base else None,
            "speedup": None,
            "met": None,
        }
        if base and c.get("fits") and c.get("tokens_per_s"):
            if base.get("oom"):
                row["met"] = True  # the example does not fit this budget at all
            elif base.get("tokens_per_s"):
                row["speedup"] = round(c["tokens_per_s"] / base["tokens_per_s"], 3)
                row["met"] = row["speedup"] >= SPEEDUP_TARGET
        elif c.get("fits") is False:
            row["met"] = False
        speed_rows.append(row)
    planner_rows = [
        {
            "kind": c["kind"],
            "model": c["model"],
            "profile": c["profile"],
            "planner_peak_gb": c.get("planner_peak_gb"),
            "measured_peak_reserved_gb": c.get("peak_reserved_gb"),
            "planner_error": c.get("planner_error"),
            "met": c.get("planner_within_15pct"),
        }
        for c in cells
        if c.get("fits")
    ]
    plus = {(c["model"], c["profile"]): c for c in cells if c["kind"] == "max_context_plus10"}
    context_rows = []
    for c in cells:
        if c["kind"] != "max_context":
            continue
        over = plus.get((c["model"], c["profile"])) or {}
        fits = c.get("fits")
        context_rows.append(
            {
                "model": c["model"],
                "profile": c["profile"],
                "method": c.get("method"),
                "cutoff": c.get("cutoff"),
                "planner_longest_cutoff": c.get("planner_longest_cutoff"),
                "offload_checkpoints": c.get("offload_checkpoints"),
                "fits": fits,
                "oom": c.get("oom"),
                "budget_fraction": c.get("budget_fraction"),
                "planner_peak_gb": c.get("planner_peak_gb"),
                "measured_peak_reserved_gb": c.get("peak_reserved_gb"),
                "plus10_cutoff": over.get("cutoff"),
                "plus10_fits": over.get("fits"),
                "plus10_oom": over.get("oom"),
                "plus10_budget_fraction": over.get("budget_fraction"),
                "plus10_within_92pct": over.get("within_92pct"),
                # within 92% too, as every ftw cell: the rest of a real card is the CUDA context and headroom
                "met": False if fits is False else None if fits is None else c.get("within_92pct"),
            }
        )
    return {
        "fit_within_92pct": {
            "target": f"every ftw cell fits, peak reserved <= {FIT_TARGET:.0%} of the profile's memory",
            "met": verdict([r["met"] for r in fit_rows]),
            "cells": fit_rows,
        },
        "speedup_vs_example": {
            "target": f"ftw tokens/s >= {SPEEDUP_TARGET}x LLaMA-Factory's QLoRA example, same model "
            "and budget (met also when the example does not fit the budget)",
            "met": verdict([r["met"] for r in speed_rows]),
            "pairs": speed_rows,
        },
        "planner_within_15pct": {
            "target": f"planner peak estimate within ±{PLANNER_TOLERANCE:.0%} of the measured peak "
            "reserved, in every cell that ran",
            "met": verdict([r["met"] for r in planner_rows]),
            "cells": planner_rows,
        },
        "longest_context_fits": {
            "target": "the planner's longest cutoff_len (ftw plan --max-context: micro-batch 1, checkpoints "
            f"offloaded) trains within {FIT_TARGET:.0%} of the profile's memory; the +10% cell beside it is "
            "informational (fitting too means the planner leaves more than 10% of the context unused)",
            "met": verdict([r["met"] for r in context_rows]),
            "cells": context_rows,
        },
    }


def write_results(path: Path, header: dict, new_cells: list[dict]) -> dict:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    cells = {cell_key(c): c for c in data.get("cells", [])}
    for cell in new_cells:
        cells[cell_key(cell)] = cell
    commands = list(data.get("commands", []))
    if header["command"] not in commands:
        commands.append(header["command"])
    data.update(
        header, commands=commands, cells=sorted(cells.values(), key=lambda c: (c["model"], c["memory_gb"], c["kind"]))
    )
    data["targets"] = targets(data["cells"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    return data


def print_table(con, data: dict) -> None:
    from rich.table import Table

    def fmt(value, spec="", none="—"):
        return none if value is None else format(value, spec)

    table = Table(title=f"bench/profiles on {data['gpu']} (peak {fmt(data['peak_bf16_tflops'])} TFLOP/s bf16)")
    for column in (
        "kind",
        "model",
        "profile",
        "method",
        "micro×acc",
        "cutoff",
        "ckpt",
        "offload",
        "fits",
        "alloc GiB",
        "reserved GiB",
        "% of budget",
        "planner GiB",
        "planner err",
        "tokens/s",
        "MFU",
        "× example",
    ):
        table.add_column(column, justify="right" if column not in ("kind", "model", "profile", "method") else "left")
    speed = {(p["model"], p["profile"]): p for p in data["targets"]["speedup_vs_example"]["pairs"]}
    for c in data["cells"]:
        fits = "error" if c.get("fits") is None else ("yes" if c["fits"] else "OOM" if c.get("oom") else "no")
        pair = speed.get((c["model"], c["profile"])) if c["kind"] == "ftw" else None
        ratio = (
            f"{pair['speedup']:.2f}"
            if pair and pair["speedup"]
            else "example OOM"
            if pair and pair.get("example_oom")
            else "—"
        )
        table.add_row(
            KIND_LABELS.get(c["kind"], c["kind"]),
            c["model"].split("/")[-1],
            c["profile"],
            c.get("method", "?"),
            f"{c.get('micro_batch') or '?'}×{c.get('grad_accum') or '?'}",
            fmt(c.get("cutoff"), ","),
            {True: "on", False: "off"}.get(c.get("gradient_checkpointing"), "—"),
            {True: f"on {fmt(c.get('host_ram_gb'), '.2f')} GiB", False: "off"}.get(c.get("offload_checkpoints"), "—"),
            fits,
            fmt(c.get("peak_allocated_gb"), ".2f"),
            fmt(c.get("peak_reserved_gb"), ".2f"),
            fmt(c["budget_fraction"] * 100 if c.get("budget_fraction") else None, ".0f"),
            fmt(c.get("planner_peak_gb"), ".2f"),
            fmt(c["planner_error"] * 100 if c.get("planner_error") is not None else None, "+.0f")
            + ("%" if c.get("planner_error") is not None else ""),
            fmt(c.get("tokens_per_s"), ",.0f"),
            fmt(c["mfu"] * 100 if c.get("mfu") else None, ".1f"),
            ratio,
        )
    con.print(table)
    if data.get("smoke"):
        con.print(
            "[yellow]--cpu-smoke: a tiny model on the CPU without a memory cap; these numbers check the "
            "plumbing, they measure nothing about the targets[/yellow]"
        )
    for name, target in data["targets"].items():
        met = target["met"]
        mark = (
            "[green]met[/green]" if met else "[red]not met[/red]" if met is False else "[yellow]not measured[/yellow]"
        )
        con.print(f"  {name}: {mark} — {target['target']}")
    for row in data["targets"]["longest_context_fits"]["cells"]:
        plus10 = {True: "fits", False: "does not fit"}.get(row["plus10_fits"], "not run")
        con.print(
            f"  longest context {row['model'].split('/')[-1]} on {row['profile']}: {row['cutoff']:,} tokens "
            f"{'fits' if row['fits'] else 'does not fit' if row['fits'] is False else 'not run'}; "
            f"+10% ({fmt(row['plus10_cutoff'], ',')}) {plus10}"
        )
    for c in data["cells"]:
        if c.get("error") and not c.get("oom"):
            con.print(f"[red]error[/red] {c['kind']} {c['model']} {c['profile']}: {c['error'][-1500:]}")


def say(con, cell: dict) -> None:
    if cell.get("offload_checkpoints"):
        con.print(f"  checkpoints offloaded to host RAM (use_unsloth_gc): planner ~{cell.get('host_ram_gb')} GiB")
    if cell.get("fits"):
        memory = (
            f"peak reserved {cell['peak_reserved_gb']} GiB of {cell['memory_gb']:g}, "
            if cell.get("peak_reserved_gb") is not None
            else ""
        )
        con.print(
            f"  fits: {memory}planner {cell.get('planner_peak_gb')} GiB, {cell.get('tokens_per_s')} tokens/s, "
            f"{cell['wall_s']} s"
        )
    elif cell.get("oom"):
        con.print(f"  [yellow]OOM[/yellow] within {cell['memory_gb']:g} GiB ({cell['wall_s']} s)")
    else:
        con.print(f"  [red]error[/red] ({cell.get('wall_s', 0)} s): {(cell.get('error') or '')[-800:]}")
