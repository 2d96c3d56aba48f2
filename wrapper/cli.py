"""`ftw`: one command per pipeline stage, each reading and writing runs/RUN/."""

from __future__ import annotations

import errno
import signal
import sys
from pathlib import Path

import click

from wrapper.errors import FtwError
from wrapper.paths import runs_dir
from wrapper.ui import console, quiet_libraries

run_option = click.option("--run", "run", required=True, help="Run name: the folder runs/RUN holds everything.")
force_option = click.option("--force", is_flag=True, help="Redo the stage even if its output exists.")


def run_path(run: str) -> Path:
    path = runs_dir() / run
    if not (path / "manifest.json").is_file():
        raise FtwError(f"no run '{run}' under {runs_dir()}. Render it first: "
                       f"ftw render --recipe R --profile P --run {run}")
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Fine-tune with LLaMA-Factory, convert with llama.cpp, serve with Ollama / LM Studio."""


@cli.command()
@click.option("--recipe", required=True, help="Recipe name in recipes/ or a path to a recipe .yaml.")
@click.option("--profile", required=True, help="Profile name in recipes/profiles/ or a path to a .yaml.")
@run_option
@click.option("--data", "data_files", multiple=True, help="Your Alpaca/ShareGPT JSON(L) file(s); replace the recipe's dataset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set learning_rate=5e-5 or --set system='...'.")
@click.option("--ignore-fit", is_flag=True, help="Render even if the planner says it won't fit the profile's GPU.")
def render(recipe: str, profile: str, run: str, data_files: tuple[str, ...], overrides: tuple[str, ...],
           ignore_fit: bool) -> None:
    """Render and check the LLaMA-Factory configs for a run (PROFILE 'auto' detects the GPU)."""
    from wrapper.detect import resolve
    from wrapper.render import render as render_run

    profile = resolve(profile)
    with console.status("rendering and checking with LLaMA-Factory's parser"):
        plan = render_run(recipe, profile, run, list(data_files), list(overrides), ignore_fit)
    rows = sum(d["rows"] for d in plan.datasets)
    console.print(f"[green]✓[/green] {plan.run}: {plan.recipe} ({plan.method}) on {plan.profile}, "
                  f"{rows} rows in {len(plan.datasets)} file(s), template {plan.template}")
    console.print(f"  {plan.dir}/train.yaml, export.yaml, dataset_info.json, manifest.json")
    if plan.prepared_data:
        from rich.markup import escape

        data = plan.prepared_data
        console.print(f"  data: prepared by `ftw data prepare` in {data['dir']} ({data['prepared_at']}): "
                      f"train {data['train']}, val {data['val']} rows; pass --data to use other files")
        for changed in data["changed_sources"]:
            console.print(f"  [yellow]note[/yellow]: {escape(changed)} changed since it was prepared; "
                          "run ftw data prepare again")
    elif data_files and (plan.dir / "data" / "prepared.json").is_file():
        console.print(f"  data: --data given, so the prepared data in {plan.dir / 'data'} is not used this time")
    if plan.fit:
        fit, settings = plan.fit, plan.fit["settings"]
        console.print(f"  planner: ~{fit['peak_vram_gb']:.1f} of {fit['budget_gb']:.1f} GiB per GPU "
                      f"({'fits' if fit['fits'] else 'DOES NOT FIT, rendered because of --ignore-fit'}); "
                      f"{settings['method']}, micro-batch {settings['micro_batch']} x {settings['grad_accum']}, "
                      f"checkpointing {'on' if settings['checkpointing'] else 'off'}")
        for note in fit["notes"]:
            console.print(f"  note: {note}")
    if plan.skipped_checks:
        console.print(f"  checked keys and values only; skipped on this machine: {'; '.join(plan.skipped_checks)}")
    if plan.base_quantization:
        console.print(f"  base is a pre-quantized {plan.base_quantization} checkpoint: "
                      f"the LoRA will be merged into {plan.merge_base_source}")


@cli.command()
@click.option("--recipe", required=True, help="Recipe name in recipes/ or a path to a recipe .yaml.")
@click.option("--profile", required=True, help="Profile name, alias, NAMExN for N GPUs, or 'auto'.")
@click.option("--data", "data_files", multiple=True, help="Plan for these data files instead of the recipe's.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def plan(recipe: str, profile: str, data_files: tuple[str, ...], overrides: tuple[str, ...], as_json: bool) -> None:
    """Before training: memory per GPU, fit and margin, tokens per step, epoch time, output sizes."""
    from wrapper.detect import resolve
    from wrapper.plan_report import run_plan_command

    run_plan_command(recipe, resolve(profile), list(data_files), list(overrides), as_json)


@cli.command()
@run_option
@click.option("--force", is_flag=True, help="Train again from the start, dropping the adapter and its checkpoints.")
@click.option("--ignore-fit", is_flag=True, help="Start even if the GPU has less free memory than the plan needs.")
def train(run: str, force: bool, ignore_fit: bool) -> None:
    """Train with llamafactory-cli; re-running resumes from the last checkpoint (same settings and data only)."""
    from wrapper.train import train as train_run

    train_run(run_path(run), force=force, ignore_fit=ignore_fit)


@cli.command()
@run_option
@click.option("--weights-dtype", type=click.Choice(["f16", "base"]), default="f16", show_default=True,
              help="f16: the merged bf16 values stored as the f16 GGUF holds them, so llama.cpp's converter "
                   "needs no float32 copy (an 8B export in about 2 GB of RAM); base: stored in the base's dtype, "
                   "for using merged/ elsewhere or for ftw gguf --outtype bf16.")
@force_option
def export(run: str, weights_dtype: str, force: bool) -> None:
    """Merge the LoRA into the full-precision base (streaming, no GPU; else llamafactory-cli export)."""
    from wrapper.export import export as export_run

    export_run(run_path(run), force=force, weights_dtype=weights_dtype)


@cli.command()
@run_option
@click.option("--quant", "quants", multiple=True, default=("Q4_K_M",), show_default=True,
              help="llama.cpp quantization type(s); repeat for several.")
@click.option("--outtype", default="f16", show_default=True, type=click.Choice(["f16", "bf16"]),
              help="Precision of the unquantized GGUF the quantizer starts from.")
@click.option("--keep-intermediates", is_flag=True,
              help="Keep the merged weights and the f16/bf16 GGUF (ftw eval needs them); "
                   "by default they are removed once the quantized files are verified.")
@force_option
def gguf(run: str, quants: tuple[str, ...], outtype: str, keep_intermediates: bool, force: bool) -> None:
    """Convert the merged model to GGUF with llama.cpp and quantize it."""
    from wrapper.gguf_stage import make_ggufs

    make_ggufs(run_path(run), list(quants), outtype=outtype, force=force, keep_intermediates=keep_intermediates)


@cli.command()
@run_option
@click.option("--quant", default="Q4_K_M", show_default=True, help="Which quantized GGUF the Modelfile uses.")
def modelfile(run: str, quant: str) -> None:
    """Write an Ollama Modelfile for the run's quantized GGUF."""
    from wrapper.modelfile import write_modelfile

    write_modelfile(run_path(run), quant.upper())


@cli.command()
@run_option
@click.option("--quant", default="Q4_K_M", show_default=True)
def smoke(run: str, quant: str) -> None:
    """Ask the recipe's check prompts to the quantized GGUF in llama.cpp."""
    from wrapper.smoke import smoke as smoke_run

    smoke_run(run_path(run), quant.upper())


@cli.command()
@run_option
@click.option("--quant", default="Q4_K_M", show_default=True)
def answers(run: str, quant: str) -> None:
    """Table of the check prompts: base model beside the fine-tuned quantized GGUF."""
    from wrapper.smoke import compare_with_base

    compare_with_base(run_path(run), quant.upper())


@cli.command()
@run_option
def ollama(run: str) -> None:
    """Run `ollama create` from the run's Modelfile, or print the command where Ollama is absent."""
    from wrapper.modelfile import ollama_create

    ollama_create(run_path(run))


@cli.command()
@run_option
@click.option("--quant", default="Q4_K_M", show_default=True, help="Which quantized GGUF to talk to.")
@click.option("--temperature", type=float, default=None,
              help="Override the recipe's temperature (0 = greedy). Other sampling settings come from the recipe.")
def chat(run: str, quant: str, temperature: float | None) -> None:
    """Chat with the run's GGUF in the terminal (llama.cpp, prompts in the training format, streamed)."""
    from wrapper.chat import chat as chat_session

    chat_session(run_path(run), quant.upper(), temperature)


@cli.command()
@run_option
@click.option("--quant", default="Q4_K_M", show_default=True, help="Which quantized GGUF to place.")
@click.option("--dir", "models_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="LM Studio's models folder (default: found under ~/.lmstudio or ~/.cache/lm-studio).")
@click.option("--copy", is_flag=True, help="Copy the file instead of linking it.")
def lmstudio(run: str, quant: str, models_dir: Path | None, copy: bool) -> None:
    """Put the run's GGUF into LM Studio's models folder (publisher/model/file.gguf), or say where it goes."""
    from wrapper.lmstudio import place

    place(run_path(run), quant.upper(), models_dir, copy)


@cli.command("eval")
@run_option
@click.option("--val-sample", type=int, default=None,
              help="Validation rows to answer (default: the recipe's eval.val_sample, else 30; 0: none).")
@click.option("--limit", type=int, default=None, help="At most N prompts of each set (a quick look).")
@click.option("--max-new-tokens", type=int, default=None, help="Longest greedy answer (default: eval.max_new_tokens, else 64).")
def eval_command(run: str, val_sample: int | None, limit: int | None, max_new_tokens: int | None) -> None:
    """Base vs merged vs Q4_K_M GGUF on control prompts, validation rows and general knowledge; writes eval.json + report.

    Interrupted? Run it again: rows already scored (runs/RUN/eval/rows.jsonl) are kept.
    """
    from wrapper.evaluate import evaluate

    evaluate(run_path(run), val_sample=val_sample, limit=limit, max_new_tokens=max_new_tokens)


@cli.command()
@click.option("--run", "runs", required=True, multiple=True,
              help="Run name; give --run several times to compare runs in one table.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Comparison: also write the table as Markdown to this file.")
def report(runs: tuple[str, ...], out: Path | None) -> None:
    """One run: (re)write report.md and report.html from eval.json. Several runs: compare them in one table."""
    from wrapper.report import compare_runs, write_report

    if len(runs) == 1:
        md, html = write_report(run_path(runs[0]))
        console.print(f"[green]✓[/green] {md}\n  {html}")
    else:
        compare_runs([run_path(r) for r in runs], out)


@cli.group()
def data() -> None:
    """Your data files: check them, then prepare a clean, split training set for a run."""


@data.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--recipe", default="demo", show_default=True,
              help="Recipe whose tokenizer, template, cutoff_len and data: section apply.")
@click.option("--max-problems", default=0, show_default=True, help="Show at most N invalid rows per file (0: all).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every problem and duplicate, and each file's summary, to this JSONL file.")
def data_check(files: tuple[str, ...], recipe: str, max_problems: int, report_path: Path | None) -> None:
    """Report rows, problems (file:line), duplicates, token lengths and languages; exit 1 if any row is invalid.

    FILES: JSON/JSONL (Alpaca, ShareGPT, OpenAI messages, {"text"}, chat logs with data.field_map),
    .txt/.md, .srt/.vtt, or folders of them.
    """
    from wrapper.data_check import check

    check(list(files), recipe, max_problems, report_path)


@data.command("prepare")
@click.option("--recipe", required=True, help="Recipe name in recipes/ or a path to a recipe .yaml.")
@click.option("--data", "data_files", multiple=True, help="File(s) or folder(s) to use instead of the recipe's dataset.")
@run_option
@click.option("--profile", default=None,
              help="Render the run with this profile afterwards (default: the one it was rendered with, "
                   "if any; 'auto' detects the GPU).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set data.val_ratio=0.05.")
def data_prepare(recipe: str, data_files: tuple[str, ...], run: str, profile: str | None,
                 overrides: tuple[str, ...]) -> None:
    """Merge, normalise, dedupe and split into runs/RUN/data (train, val, rejects); train uses it."""
    from wrapper.data_prepare import prepare
    from wrapper.detect import resolve

    prepare(recipe, list(data_files), run, resolve(profile) if profile else None, list(overrides))


INTERRUPTED = ("[yellow]interrupted[/yellow]: the child processes were stopped and unfinished files removed. "
               "Re-run the same command to continue (training resumes from its last complete checkpoint).")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a shutdown, `kill`, a closed terminal): unwinds like Ctrl-C, so that the
    children are stopped and partial files removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def stop_on_signals() -> None:
    def handler(signum, _frame):
        raise Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def main() -> None:
    quiet_libraries()
    stop_on_signals()
    try:
        cli.main(standalone_mode=False)
    except FtwError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        console.print(INTERRUPTED, soft_wrap=True)
        stop = exc if isinstance(exc, Stopped) else exc.__cause__  # click turns KeyboardInterrupt into Abort
        sys.exit(128 + (stop.signum if isinstance(stop, Stopped) else signal.SIGINT))
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        console.print(f"[bold red]error:[/bold red] the disk is full{where} ({exc.strerror}). The unfinished file "
                      f"was removed; free some space and re-run the same command.", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
