"""`ftw plan`: before training, say whether it fits, with what margin, how long an epoch
takes and how big the merged model and the Q4_K_M GGUF will be."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from wrapper import planner
from wrapper.datasets import _records, detect_format
from wrapper.errors import FtwError
from wrapper.recipes import load_profile, load_recipe
from wrapper.ui import console

CHARS_PER_TOKEN = 3.0  # used only when the tokenizer isn't on this machine; Cyrillic runs ~2.5-3.5


def _row_texts(record: dict, fmt: str) -> list[str]:
    if fmt == "alpaca":
        texts = [record.get(k) or "" for k in ("system", "instruction", "input", "output")]
        for turn in record.get("history") or []:
            texts.extend(str(part) for part in turn)
        return texts
    if fmt == "text":
        return [record.get("text") or ""]
    messages = record.get("conversations") if fmt == "sharegpt" else record.get("messages")
    key = "value" if fmt == "sharegpt" else "content"
    return [str(m.get(key) or "") for m in messages or []] + [record.get("system") or ""]


def _local_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except Exception:  # not downloaded: fall back to a character estimate, and say so
        return None


def dataset_tokens(paths: list[str], base_model: str, cutoff: int) -> tuple[int, int, str]:
    """(rows, training tokens per epoch after truncation to cutoff, how they were counted)."""
    tokenizer = _local_tokenizer(base_model)
    rows = tokens = 0
    for path in paths:
        for _, record in _records(Path(path)):
            fmt = detect_format(record)
            texts = _row_texts(record, fmt)
            if tokenizer is not None:
                count = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t)
            else:
                count = int(sum(len(t) for t in texts) / CHARS_PER_TOKEN)
            # about 5 template tokens per message (role markers, end of turn)
            tokens += min(cutoff, count + 5 * len(texts))
            rows += 1
    how = "tokenizer of the base model" if tokenizer is not None else \
        f"estimated at {CHARS_PER_TOKEN:g} characters per token (base model's tokenizer not downloaded)"
    return rows, tokens, how


def plan_report(recipe_name: str, profile_name: str, data_files: list[str], overrides: list[str]) -> dict:
    from wrapper.render import build_plan

    recipe = load_recipe(recipe_name, overrides)
    profile = load_profile(profile_name)
    plan, _ = build_plan(recipe, profile, "plan", data_files, ignore_fit=True)
    shape = planner.ModelShape.from_config(planner.model_config(plan.base_model))
    merged_gb, gguf_gb = planner.gguf_sizes_gb(shape)
    args = plan.train_args
    rows, tokens, counted = dataset_tokens([d["path"] for d in plan.datasets], plan.base_model, int(args.get("cutoff_len", 2048)))
    epochs = float(args.get("num_train_epochs", 3))
    report = {"recipe": recipe.name, "profile": profile.name, "base_model": plan.base_model, "method": plan.method,
              "params_b": round(shape.params / 1e9, 3), "dataset_rows": rows, "dataset_tokens": tokens,
              "dataset_tokens_counted_by": counted, "epochs": epochs,
              "merged_gb": round(merged_gb, 2), "gguf_q4_k_m_gb": round(gguf_gb, 2)}
    if plan.fit is None:
        report.update(fits=True, peak_vram_gb=0.0, budget_gb=0.0, epoch_hours=None,
                      notes=["cpu profile: no GPU memory to plan; training runs on the CPU"])
        return report
    settings = planner.Settings(**plan.fit["settings"])
    tps, throughput_source = planner.tokens_per_second(shape, settings, planner.profile_facts(profile), plan.base_model)
    report.update({key: plan.fit[key] for key in ("fits", "peak_vram_gb", "budget_gb", "memory_gb", "settings", "notes")})
    report.update(margin_gb=round(plan.fit["budget_gb"] - plan.fit["peak_vram_gb"], 2),
                  tokens_per_step=settings.tokens_per_step, tokens_per_s=round(tps, 1),
                  throughput_source=throughput_source, epoch_hours=round(tokens / tps / 3600, 3),
                  deepspeed=plan.fit.get("deepspeed_template"))
    return report


def print_report(report: dict) -> None:
    verdict = "[green]fits[/green]" if report["fits"] else "[red]does not fit[/red]"
    console.print(f"[bold]{report['recipe']}[/bold] on [bold]{report['profile']}[/bold]: {verdict} — "
                  f"{report['base_model']} ({report['params_b']} B params), {report['method']}")
    if report.get("memory_gb"):
        table = Table(title="estimated peak GPU memory per GPU (GiB)")
        table.add_column("part")
        table.add_column("GiB", justify="right")
        for part, value in report["memory_gb"].items():
            table.add_row(part, f"{value:.2f}")
        table.add_row("[bold]total[/bold]", f"[bold]{report['peak_vram_gb']:.2f}[/bold]")
        table.add_row("budget (92%)", f"{report['budget_gb']:.2f}")
        table.add_row("margin", f"{report['margin_gb']:.2f}")
        console.print(table)
        s = report["settings"]
        console.print(f"settings: micro-batch {s['micro_batch']} x accumulation {s['grad_accum']} x {s['gpus']} GPU(s), "
                      f"cutoff {s['cutoff']}, gradient checkpointing {'on' if s['checkpointing'] else 'off'}"
                      + (f", DeepSpeed {report['deepspeed']}" if report.get("deepspeed") else ""))
        console.print(f"tokens per optimizer step: {report['tokens_per_step']:,}; throughput ~{report['tokens_per_s']:,.0f} "
                      f"tokens/s ({report['throughput_source']})")
        console.print(f"epoch: {report['dataset_tokens']:,} tokens in {report['dataset_rows']:,} rows "
                      f"({report['dataset_tokens_counted_by']}) -> ~{report['epoch_hours'] * 60:.1f} min per epoch, "
                      f"{report['epochs']:g} epochs")
    for note in report.get("notes", []):
        console.print(f"note: {note}")
    console.print(f"merged bf16 model ~{report['merged_gb']:.1f} GiB, Q4_K_M GGUF ~{report['gguf_q4_k_m_gb']:.1f} GiB")


def run_plan_command(recipe: str, profile: str, data_files: list[str], overrides: list[str], as_json: bool) -> None:
    report = plan_report(recipe, profile, data_files, overrides)
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print_report(report)
    if not report["fits"]:
        raise FtwError("the plan does not fit this profile (see above)")
