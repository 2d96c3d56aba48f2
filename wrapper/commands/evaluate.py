"""`ftw eval`, `ftw report`: did the fine-tune learn, forget, or lose quality in quantization?"""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from wrapper.commands.eval_tables import print_report, print_table
from wrapper.commands.options import run_option, runs_option, writes_run
from wrapper.core.eval_result import EVAL_JSON
from wrapper.core.gguf_io import QUANT_TYPES
from wrapper.core.manifest import run_dir_of
from wrapper.core.ui import console, done
from wrapper.eval.evaluate import evaluate
from wrapper.eval.report import compare_runs, write_comparison, write_report
from wrapper.eval.tables import knowledge_headline, report_of


@click.command("eval")
@run_option
@click.option(
    "--val-sample",
    type=int,
    default=None,
    help="Validation rows to answer (default: the run's eval.val_sample, else 30; 0: none).",
)
@click.option("--limit", type=int, default=None, help="At most N prompts of each set (a quick look).")
@click.option(
    "--max-new-tokens", type=int, default=None, help="Longest greedy answer (default: the run's eval.max_new_tokens)."
)
@click.option(
    "--quant-loss/--no-quant-loss",
    default=True,
    show_default=True,
    help="Measure each quantized GGUF's KL divergence from the f16 GGUF with llama-perplexity "
    "(built on first use, a few minutes once: ftw tools).",
)
@click.option(
    "--build-tools/--no-build-tools",
    default=True,
    show_default=True,
    help="Build llama.cpp's tools for the KL divergence when they aren't built yet; without, the KL divergence "
    "is skipped until they are (make demo does this, so the demo's first run isn't spent compiling).",
)
@click.option(
    "--quant",
    "quants",
    multiple=True,
    type=click.Choice(QUANT_TYPES, case_sensitive=False),
    help="A quantized GGUF of the run to score; repeat for several (default: every one the run has).",
)
@click.option(
    "--judge",
    default=None,
    metavar="URL",
    help="An OpenAI-compatible endpoint (or a teacher as `ftw data synth --teacher` takes) whose model also "
    "grades the held-out and unseen answers, shown the reference and the chunk (runs with facts only).",
)
@click.option("--judge-model", default=None, metavar="M", help="The judge's model (default: the one it serves).")
@writes_run
def eval_command(
    run: str,
    val_sample: int | None,
    limit: int | None,
    max_new_tokens: int | None,
    quant_loss: bool,
    build_tools: bool,
    quants: tuple[str, ...],
    judge: str | None,
    judge_model: str | None,
) -> None:
    """Base vs merged vs each quantized GGUF on control prompts, validation rows and general knowledge.

    The settings are the ones the run was rendered with (its plan); the recipe file isn't read again.
    What the run no longer has (the merged weights and the f16 GGUF, which `ftw gguf` removes unless
    --keep-intermediates) is left out, and the output names the command that brings it back.

    Also the quantization loss, llama.cpp's way: the KL divergence of each quantized GGUF from the
    f16 GGUF on the validation rows (llama-perplexity, built on first use; skipped with the reason
    where it can't be, or with --no-quant-loss).

    When the run's prepared data has facts (probes.jsonl, unseen.jsonl from `ftw data prepare`): does
    it know the documents? Trained questions, held-out phrasings (key words and multiple choice) and
    questions about chunks never trained, per model, with 95% intervals.

    Writes runs/RUN/eval.json, report.md and report.html.

    Interrupted? Run it again: rows already scored (runs/RUN/eval/rows.jsonl) are kept.

    \b
    Example:
      ftw eval --run demo --limit 2
      ftw eval --run demo --quant Q8_0
      ftw eval --run demo --judge http://localhost:11434/v1 --judge-model qwen3:8b
    """
    run_dir = run_dir_of(run)
    result = evaluate(
        run_dir,
        val_sample=val_sample,
        limit=limit,
        max_new_tokens=max_new_tokens,
        measure_quant_loss=quant_loss,
        build_tools=build_tools,
        quants=quants,
        judge=(judge, judge_model) if judge else None,
    )
    print_report(report_of(result))
    md, html = write_report(run_dir)
    if headline := knowledge_headline(result):  # last, where it is read: does it know the documents?
        console.print(f"[bold]{escape(headline)}[/bold]", soft_wrap=True)
    done(f"{run_dir / EVAL_JSON}, {md}, {html}")


@click.command()
@runs_option("Run name; give --run several times to compare runs in one table.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Comparison: also write the table as Markdown to this file.",
)
def report(runs: tuple[str, ...], out: Path | None) -> None:
    """One run: (re)write report.md and report.html from eval.json. Several runs: compare them in one table.

    \b
    Example:
      ftw report --run demo
    """
    if len(runs) == 1:
        md, html = write_report(run_dir_of(runs[0]))
        done(f"{md}\n  {html}")
    else:
        table = compare_runs([run_dir_of(r) for r in runs])
        print_table(table)
        if out:
            done(str(write_comparison(table, out)))


COMMANDS = [eval_command, report]
