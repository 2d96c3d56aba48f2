"""`ftw plan`: before training, whether it fits, with what margin, how long an epoch takes
and how big the merged model and the Q4_K_M GGUF will be."""

from __future__ import annotations

from pathlib import Path

from wrapper.config import planner
from wrapper.config.models import model_config
from wrapper.config.profiles import load_profile
from wrapper.config.recipes import load_recipe
from wrapper.core.errors import FtwError
from wrapper.data.formats import detect_format, parse_row
from wrapper.data.readers import Problem, read_json_records
from wrapper.train.render import build_plan

CHARS_PER_TOKEN = 3.0  # used only when the tokenizer isn't on this machine; Cyrillic runs ~2.5-3.5
TEMPLATE_TOKENS_PER_PIECE = 5  # role markers and end of turn around each message


def _local_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except Exception:  # not downloaded: fall back to a character estimate, and say so
        return None


def _row_pieces(path: Path) -> list[list[str]]:
    """The texts of each row of a dataset file (render has read it whole already)."""
    rows = []
    for record in read_json_records(path):
        if record.problem is not None:
            raise FtwError(f"{path}:{record.line}: {record.problem.reason}")
        try:
            rows.append(parse_row(record.value, detect_format(record.value) or "").pieces)
        except (Problem, ValueError) as exc:
            raise FtwError(f"{path}:{record.line}: {exc}") from None
    return rows


def dataset_tokens(paths: list[str], base_model: str, cutoff: int) -> tuple[int, int, str]:
    """(rows, training tokens per epoch after truncation to cutoff, how they were counted)."""
    tokenizer = _local_tokenizer(base_model)
    rows = tokens = 0
    for path in paths:
        for texts in _row_pieces(Path(path)):
            if tokenizer is not None:
                count = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t)
            else:
                count = int(sum(len(t) for t in texts) / CHARS_PER_TOKEN)
            tokens += min(cutoff, count + TEMPLATE_TOKENS_PER_PIECE * len(texts))
            rows += 1
    how = (
        "tokenizer of the base model"
        if tokenizer is not None
        else f"estimated at {CHARS_PER_TOKEN:g} characters per token (base model's tokenizer not downloaded)"
    )
    return rows, tokens, how


def plan_report(recipe_name: str, profile_name: str, data_files: list[str], overrides: list[str]) -> dict:
    recipe = load_recipe(recipe_name, overrides)
    profile = load_profile(profile_name)
    plan, _ = build_plan(recipe, profile, "plan", data_files, ignore_fit=True)
    shape = planner.ModelShape.from_config(model_config(plan.base_model))
    merged_gb, gguf_gb = planner.gguf_sizes_gb(shape)
    args = plan.train_args
    rows, tokens, counted = dataset_tokens(
        [d["path"] for d in plan.datasets], plan.base_model, int(args.get("cutoff_len", 2048))
    )
    epochs = float(args.get("num_train_epochs", 3))
    report = {
        "recipe": recipe.name,
        "profile": profile.name,
        "base_model": plan.base_model,
        "method": plan.method,
        "params_b": round(shape.params / 1e9, 3),
        "dataset_rows": rows,
        "dataset_tokens": tokens,
        "dataset_tokens_counted_by": counted,
        "epochs": epochs,
        "merged_gb": round(merged_gb, 2),
        "gguf_q4_k_m_gb": round(gguf_gb, 2),
    }
    if plan.fit is None:
        report.update(
            fits=True,
            peak_vram_gb=0.0,
            budget_gb=0.0,
            epoch_hours=None,
            notes=["cpu profile: no GPU memory to plan; training runs on the CPU"],
        )
        return report
    settings = planner.Settings(**plan.fit["settings"])
    tps, throughput_source = planner.tokens_per_second(shape, settings, planner.profile_facts(profile), plan.base_model)
    report.update(
        {key: plan.fit[key] for key in ("fits", "peak_vram_gb", "budget_gb", "memory_gb", "settings", "notes")}
    )
    report.update(
        margin_gb=round(plan.fit["budget_gb"] - plan.fit["peak_vram_gb"], 2),
        tokens_per_step=settings.tokens_per_step,
        tokens_per_s=round(tps, 1),
        throughput_source=throughput_source,
        epoch_hours=round(tokens / tps / 3600, 3),
        deepspeed=plan.fit.get("deepspeed_template"),
    )
    return report
