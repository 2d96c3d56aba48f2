"""Benchmark: how much a fine-tune loses in quantization, measured llama.cpp's way (KL divergence
from the f16 GGUF), for Q4_K_M without an importance matrix, Q4_K_M with one, and Q8_0.

On the demo fine-tune (SmolLM2-135M-Instruct on the lore set: rendered, trained, merged and
converted in a temporary runs folder, as tests/conftest.py's demo_run does), or on a copy of a run
given with --run (it needs merged/ and the f16 GGUF: `ftw gguf --keep-intermediates`):

  Q4_K_M            the run's file from `ftw gguf` (llama-cpp-python's quantizer, no importance matrix)
  Q8_0              `ftw gguf --run R --quant Q8_0 --keep-intermediates`
  Q4_K_M + imatrix  `ftw gguf --run R --imatrix --quant Q4_K_M --keep-intermediates` (llama-imatrix on the
                    run's training rows, then llama-quantize --imatrix); skipped where `ftw gguf` has no --imatrix

Each file is copied aside before the next `ftw gguf` replaces it. Then, with the functions `ftw eval`
uses (wrapper/eval/quant_loss.py): llama-perplexity saves the f16 model's log-probabilities on a
text once and compares each file with them. Two texts:

  rows  the run's validation rows in the training format, exactly what `ftw eval` measures on; the demo
        has no validation split, so these are its training rows, which are also the importance
        matrix's calibration text: for the imatrix cell this text is in-sample
  c4    general English web text (LLaMA-Factory's c4_demo.jsonl), seen by neither the fine-tune nor
        the importance matrix: out of sample

Also checks that llama-quantize without an importance matrix makes the same bytes as ftw's Q4_K_M
(llama-cpp-python's library), so that the imatrix cell differs by the matrix only.
Writes bench/results/quant_quality.json and prints a Markdown table.

    .venv/bin/python bench/quant_quality.py                  # trains the demo first (~3 min on 2 quiet cores)
    .venv/bin/python bench/quant_quality.py --run runs/demo  # a finished demo run: ~2.5 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from repo_path import REPO

from tests.support.runner import run_ftw

RESULTS = REPO / "bench" / "results" / "quant_quality.json"
# LLaMA-Factory's data/c4_demo.jsonl (in its repository, not its package): where this workplace keeps it;
# --c4 names another copy, and without one the c4 cells are left out.
C4 = Path("/work/shared/external/llamafactory-data/c4_demo.jsonl")
RUN = "qq"


def ftw(runs_dir: Path, *args: str) -> float:
    started = time.perf_counter()
    run_ftw(runs_dir, *args, timeout=None)
    return round(time.perf_counter() - started, 1)


def has_imatrix_option(runs_dir: Path) -> bool:
    return "--imatrix" in run_ftw(runs_dir, "gguf", "--help").stdout


def demo_run(runs_dir: Path) -> tuple[Path, dict[str, float]]:
    seconds = {"render": ftw(runs_dir, "render", "--recipe", "demo", "--profile", "cpu", "--run", RUN)}
    for stage in ("train", "export", "gguf"):
        extra = ("--keep-intermediates",) if stage == "gguf" else ()
        seconds[stage] = ftw(runs_dir, stage, "--run", RUN, *extra)
    return runs_dir / RUN, seconds


def copy_run(source: Path, runs_dir: Path) -> Path:
    """A copy of the run (its manifest's paths pointed at the copy): `ftw gguf` below rewrites its files."""
    copy = runs_dir / source.name
    shutil.copytree(source, copy, symlinks=True, ignore=shutil.ignore_patterns("eval", "report*", "*.partial*"))
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(str(source.resolve()), str(copy)), "utf-8")
    return copy


def c4_text(tokenizer, max_tokens: int, c4: Path = C4) -> dict | None:
    if not c4.is_file():
        return None
    pieces, tokens = [], 0
    for line in c4.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"].strip() + "\n\n"
        count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if pieces and tokens + count > max_tokens:
            break
        pieces.append(text)
        tokens += count
    text = "".join(pieces)
    return {
        "text": text,
        "rows": len(pieces),
        "tokens": tokens,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "source": f"{c4} (LLaMA-Factory's c4_demo.jsonl, the first documents)",
        "seen_in_training": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="A run folder to copy (default: train the demo).")
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--c4", type=Path, default=C4, help="LLaMA-Factory's c4_demo.jsonl (general text).")
    args = parser.parse_args()

    from wrapper.core import llama_tools, manifest
    from wrapper.core.fsutil import sha256_of
    from wrapper.data.samples import sample_text
    from wrapper.eval import quant_loss, scoreboard
    from wrapper.eval.evaluate import gguf_threads
    from wrapper.prompts.training_format import training_format

    work = Path(args.work or tempfile.mkdtemp(prefix="ftw-quant-quality-"))
    runs_dir = work / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if args.run:
        run_dir, seconds = copy_run(args.run.resolve(), runs_dir), {}
    else:
        print("training the demo fine-tune ...", flush=True)
        run_dir, seconds = demo_run(runs_dir)
    name = run_dir.name
    plan = manifest.plan_of(run_dir)
    base = manifest.artifact(run_dir, "gguf_f16", "ftw gguf --keep-intermediates")
    aside = work / "aside"
    aside.mkdir(exist_ok=True)

    variants: dict[str, dict] = {}
    q4 = manifest.artifact(run_dir, "gguf_q4_k_m", "ftw gguf")
    variants["Q4_K_M"] = {"quant": "Q4_K_M", "imatrix": False, "file": shutil.copy2(q4, aside / "Q4_K_M.gguf")}
    print("quantizing Q8_0 ...", flush=True)
    seconds["gguf Q8_0"] = ftw(runs_dir, "gguf", "--run", name, "--quant", "Q8_0", "--keep-intermediates")
    q8 = manifest.artifact(run_dir, "gguf_q8_0", "ftw gguf")
    variants["Q8_0"] = {"quant": "Q8_0", "imatrix": False, "file": shutil.copy2(q8, aside / "Q8_0.gguf")}
    imatrix_info = None
    if has_imatrix_option(runs_dir):
        print("quantizing Q4_K_M with an importance matrix ...", flush=True)
        argv = ("gguf", "--run", name, "--imatrix", "--quant", "Q4_K_M", "--keep-intermediates")
        seconds["gguf Q4_K_M --imatrix"] = ftw(runs_dir, *argv)
        q4i = manifest.artifact(run_dir, "gguf_q4_k_m", "ftw gguf")
        variants["Q4_K_M + imatrix"] = {
            "quant": "Q4_K_M",
            "imatrix": True,
            "file": shutil.copy2(q4i, aside / "Q4_K_M-imatrix.gguf"),
        }
        imatrix_info = manifest.load(run_dir).get("stages", {}).get("gguf_imatrix", {}).get("inputs")
    else:
        variants["Q4_K_M + imatrix"] = {"quant": "Q4_K_M", "imatrix": True, "skipped": "`ftw gguf` has no --imatrix"}

    # Is the imatrix cell's quantizer the same as ftw's plain one? llama-quantize without a matrix, same bytes?
    quantize = llama_tools.tool("llama-quantize")
    plain = aside / "Q4_K_M-llama-quantize.gguf"
    log = work / "bench.log"
    with log.open("a") as handle:
        subprocess.run([str(quantize), str(base), str(plain), "Q4_K_M"], stdout=handle, stderr=handle, check=True)
    same_quantizer = sha256_of(plain) == sha256_of(Path(variants["Q4_K_M"]["file"]))
    plain.unlink()

    fmt = training_format(manifest.artifact(run_dir, "merged", "ftw export"), plan.template, plan.system)
    rows = sample_text(run_dir, plan, fmt, "val", quant_loss.MAX_TOKENS, 42, min_tokens=2 * quant_loss.MIN_CONTEXT)
    texts = {"rows": {"text": rows.text, **rows.describe()}}
    c4 = c4_text(fmt.tokenizer, quant_loss.MAX_TOKENS, args.c4)
    if c4:
        texts["c4"] = c4
    exe = llama_tools.tool(quant_loss.TOOL)
    measured: dict[str, dict] = {}
    for text_name, text in texts.items():
        ctx = quant_loss.context_for(text["tokens"])
        chunks = quant_loss.max_chunks(ctx, len(fmt.tokenizer))
        text_file, base_file = work / f"{text_name}.txt", work / f"{text_name}-base.kld"
        text_file.write_text(text["text"], encoding="utf-8")
        print(f"f16 log-probabilities on {text_name} ({text['tokens']} tokens, context {ctx}) ...", flush=True)
        ppl_f16 = quant_loss.save_base(exe, base, text_file, base_file, ctx, chunks, gguf_threads(base), log)
        base_bytes = base_file.stat().st_size
        for variant, cell in variants.items():
            if "file" not in cell:
                continue
            path = Path(cell["file"])
            started = time.perf_counter()
            stats = quant_loss.compare(exe, base, path, base_file, ctx, chunks, gguf_threads(path), log)
            measured.setdefault(variant, {})[text_name] = {
                **{k: getattr(stats, k) for k in stats.__dataclass_fields__},
                "ppl_f16": ppl_f16,
                "ppl_q_over_f16": stats.ppl_q / ppl_f16 if ppl_f16 else None,
                "tokens": stats.positions,
                "seconds": round(time.perf_counter() - started, 1),
                "base_logprob_bytes": base_bytes,
            }
        base_file.unlink()

    cells = []
    for variant, cell in variants.items():
        entry = {"variant": variant, "quant": cell["quant"], "imatrix": cell["imatrix"]}
        if "skipped" in cell:
            cells.append({**entry, "skipped": cell["skipped"]})
            continue
        published = scoreboard.published().quants.get(cell["quant"], {})
        cells.append(
            {
                **entry,
                "file_bytes": Path(cell["file"]).stat().st_size,
                "sha256": sha256_of(Path(cell["file"])),
                "by_text": measured[variant],
                "published_llama3_8b": {
                    "mean_kld": published.get("mean_kld_imatrix" if cell["imatrix"] else "mean_kld"),
                    "same_top_pct": None if cell["imatrix"] else published.get("same_top_pct"),
                    "ppl_ratio": None if cell["imatrix"] else published.get("ppl_ratio"),
                },
            }
        )
    report = {
        "command": " ".join([".venv/bin/python", "bench/quant_quality.py", *sys.argv[1:]]),
        "run": str(args.run) if args.run else "trained here",
        "recipe": plan.recipe,
        "profile": plan.profile,
        "base_model": str(plan.merge_base),
        "base_gguf": {"file": base.name, "bytes": base.stat().st_size},
        "texts": {name: {k: v for k, v in text.items() if k != "text"} for name, text in texts.items()},
        "imatrix_inputs": imatrix_info,
        "llama_quantize_plain_equals_ftw_q4_k_m": same_quantizer,
        "cells": cells,
        "seconds": seconds,
        "notes": [
            "text 'rows': the run's validation rows as `ftw eval` takes them; the demo has no validation split, "
            "so they are its training rows, which are also the importance matrix's calibration text (in-sample "
            "for the imatrix cell). Text 'c4' was seen by neither.",
            quant_loss.SPECIAL_TOKENS_NOTE,
            quant_loss.PPL_RATIO_NOTE,
        ],
        "published": {"source": scoreboard.published().source, "floor_kld": scoreboard.published().floor_kld},
        "machine": {
            "cpus": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(),
        },
        "versions": manifest.versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(markdown(report))
    print(f"\nwrote {args.out}; llama-perplexity's output: {log}")
    if not args.work:
        shutil.rmtree(work)


def markdown(report: dict) -> str:
    lines = [
        "| variant | size | text | mean KLD | 99% KLD | same top | PPL(Q)/PPL(f16) | llama.cpp's PPL ratio "
        "| Llama-3-8B KLD / same top |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for cell in report["cells"]:
        if "skipped" in cell:
            lines.append(f"| {cell['variant']} | — | — | skipped: {cell['skipped']} | | | | | |")
            continue
        published = cell["published_llama3_8b"]
        reference = "—" if published["mean_kld"] is None else f"{published['mean_kld']:.4f}"
        if published["same_top_pct"] is not None:
            reference += f" / {published['same_top_pct']:.1f}%"
        for text_name, s in cell["by_text"].items():
            lines.append(
                f"| {cell['variant']} | {cell['file_bytes'] / 2**20:.0f} MiB | {text_name} ({s['tokens']} tokens) | "
                f"{s['mean_kld']:.4f} ± {s['mean_kld_uncertainty']:.4f} | {s['p99_kld']:.4f} | "
                f"{s['same_top_pct']:.1f}% | {s['ppl_q_over_f16']:.3f} | {s['ppl_ratio']:.3f} | {reference} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
