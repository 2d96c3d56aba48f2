"""Reports from eval.json and the training log: runs/RUN/report.md, a self-contained
runs/RUN/report.html (plots embedded as base64 PNGs; report.md links the same PNGs, written to
runs/RUN/report/), and the table comparing several runs.

The tables are built once (wrapper/eval/tables.py) and rendered by wrapper/eval/render.py; the
plots are wrapper/eval/plots.py's. Nothing here prints: the commands do.
"""

from __future__ import annotations

import json
from pathlib import Path

from wrapper.core import manifest
from wrapper.core.errors import FtwError
from wrapper.core.eval_result import EvalResult
from wrapper.core.fsutil import write_text_atomic
from wrapper.eval import render
from wrapper.eval.plots import make_plots
from wrapper.eval.tables import Table, comparison_table, report_of

IMAGES_DIR = "report"


def trainer_log(run_dir: Path) -> list[dict]:
    """LLaMA-Factory's trainer_log.jsonl of the run (a line cut off by a stop is skipped); [] without one."""
    try:
        output_dir = Path(manifest.plan_of(run_dir).train_args.get("output_dir") or run_dir / "adapter")
    except (FtwError, KeyError, TypeError):
        output_dir = run_dir / "adapter"
    path = output_dir / "trainer_log.jsonl"
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """report.md (with its PNGs in report/) and report.html from the run's eval.json."""
    result = EvalResult.load(run_dir)
    plots = make_plots(trainer_log(run_dir), result)
    images_dir = run_dir / IMAGES_DIR
    images_dir.mkdir(exist_ok=True)
    for name, png in plots.items():
        (images_dir / f"{name}.png").write_bytes(png)
    report = report_of(result)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    write_text_atomic(md_path, render.markdown(report, list(plots), IMAGES_DIR))
    write_text_atomic(html_path, render.html(report, plots))
    return md_path, html_path


def compare_runs(run_dirs: list[Path]) -> Table:
    """The runs side by side, from each one's eval.json and training log."""
    results = [EvalResult.load(d) for d in run_dirs]
    return comparison_table(results, [trainer_log(d) for d in run_dirs], [d.name for d in run_dirs])


def write_comparison(table: Table, out: Path) -> Path:
    write_text_atomic(out, "# Runs compared\n\n" + render.markdown_table(table) + "\n")
    return out
