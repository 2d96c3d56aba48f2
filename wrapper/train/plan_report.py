"""`ftw plan`: before training, whether it fits, with what margin, how long an epoch takes
and how big the merged model and the Q4_K_M GGUF will be."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path

from wrapper.config import planner
from wrapper.config.compute_dtype import BYTES_PER_PARAM
from wrapper.config.models import bnb_quantization, model_config, resolve_model
from wrapper.config.profiles import load_profile, shipped_profiles
from wrapper.config.recipes import load_recipe
from wrapper.core.errors import FtwError
from wrapper.data.formats import Row, detect_format, parse_row
from wrapper.data.readers import Problem, read_json_records
from wrapper.train.render import build_plan, tuned_args

CHARS_PER_TOKEN = 3.0  # used only when the tokenizer isn't on this machine; Cyrillic runs ~2.5-3.5
TEMPLATE_TOKENS_PER_PIECE = 5  # role markers and end of turn around each message
# Physics of LMs 3.1 (arXiv 2309.14316): one phrasing per fact, 9.7% on held-out questions; five shuffled
# rewrites, 96.6%. Under five trained phrasings a fact is likely memorised in its words, not known.
FEW_PHRASINGS = 5


def _local_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except Exception:  # not downloaded: fall back to a character estimate, and say so
        return None


def _rows(path: Path) -> list[Row]:
    """Each row of a dataset file (render has read it whole already)."""
    rows = []
    for record in read_json_records(path):
        if record.problem is not None:
            raise FtwError(f"{path}:{record.line}: {record.problem.reason}")
        try:
            rows.append(parse_row(record.value, detect_format(record.value) or ""))
        except (Problem, ValueError) as exc:
            raise FtwError(f"{path}:{record.line}: {exc}") from None
    return rows


def fact_exposures(paths: list[str], epochs: float) -> dict | None:
    """Rows that carry `fact` in the training files: how many facts, their phrasings, and how often the model
    sees each fact (phrasings x epochs); None when no row names a fact."""
    phrasings = Counter(row.fact for path in paths for row in _rows(Path(path)) if row.fact is not None)
    if not phrasings:
        return None
    counts = sorted(phrasings.values())
    median = statistics.median(counts)
    return {
        "facts": len(counts),
        "phrasings_min": counts[0],
        "phrasings_median": median,
        "exposures_min": counts[0] * epochs,
        "exposures_median": median * epochs,
        "facts_under_few_phrasings": sum(1 for n in counts if n < FEW_PHRASINGS),
    }


def few_phrasings_note(facts: dict) -> str | None:
    few = facts["facts_under_few_phrasings"]
    if not few:
        return None
    return (
        f"{few} of {facts['facts']} facts train on fewer than {FEW_PHRASINGS} phrasings (min "
        f"{facts['phrasings_min']}, median {facts['phrasings_median']:g}; {facts['exposures_min']:g} to "
        f"{facts['exposures_median']:g} exposures over the epochs): a fact trained in few wordings is recalled in "
        "those words and rarely in others (Physics of LMs 3.1: one phrasing, 9.7% on new questions; five "
        "shuffled rewrites, 96.6%). Give each fact more phrasings, or lower data.probes_per_fact"
    )


def dataset_tokens(paths: list[str], base_model: str, cutoff: int) -> tuple[int, int, str]:
    """(rows, training tokens per epoch after truncation to cutoff, how they were counted)."""
    tokenizer = _local_tokenizer(base_model)
    rows = tokens = 0
    for path in paths:
        for texts in (row.pieces for row in _rows(Path(path))):
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
    training = set(str(args.get("dataset", "")).split(","))
    report["facts"] = fact_exposures([d["path"] for d in plan.datasets if d["name"] in training], epochs)
    facts_note = few_phrasings_note(report["facts"]) if report["facts"] else None
    if plan.fit is None:
        report.update(fits=True, peak_vram_gb=0.0, budget_gb=0.0, epoch_hours=None, notes=_cpu_notes(plan, shape))
        report["notes"] += [facts_note] if facts_note else []
        return report
    settings = planner.Settings(**plan.fit["settings"])
    tps, throughput_source = planner.tokens_per_second(shape, settings, planner.profile_facts(profile), plan.base_model)
    report.update(
        {
            key: plan.fit[key]
            for key in ("fits", "peak_vram_gb", "budget_gb", "memory_gb", "host_ram_gb", "settings", "notes")
        }
    )
    report["notes"] = list(report["notes"]) + ([facts_note] if facts_note else [])
    report.update(
        margin_gb=round(plan.fit["budget_gb"] - plan.fit["peak_vram_gb"], 2),
        tokens_per_step=settings.tokens_per_step,
        tokens_per_s=round(tps, 1),
        throughput_source=throughput_source,
        epoch_hours=round(tokens / tps / 3600, 3),
        deepspeed=plan.fit.get("deepspeed_template"),
    )
    return report


def _cpu_notes(plan, shape: planner.ModelShape) -> list[str]:
    if plan.device != "cpu":
        return ["no memory plan for this profile (it names no GPU memory)"]
    notes = ["cpu profile: no GPU memory to plan; training runs on the CPU"]
    if plan.compute_dtype:
        weights_gb = shape.params * BYTES_PER_PARAM[plan.compute_dtype] / 1024**3
        notes.append(
            f"the base is computed in {plan.compute_dtype} ({plan.compute_dtype_reason}): "
            f"its weights take ~{weights_gb:.1f} GiB of RAM; model.cpu_dtype changes it"
        )
    return notes


def max_context_report(recipe_name: str, profile_name: str | None, overrides: list[str]) -> dict:
    """For each GPU profile (or the one given): the longest cutoff_len that fits at micro-batch 1,
    with checkpoints in GPU memory and offloaded to host RAM."""
    recipe = load_recipe(recipe_name, overrides)
    if recipe.method == "full":
        raise FtwError(
            f"{recipe.doc.origin('method')}: --max-context is for LoRA and QLoRA recipes; for a full fine-tune "
            f"plan one length at a time: ftw plan --recipe {recipe.name} --profile PROFILE --set cutoff_len=N"
        )
    profiles = [load_profile(profile_name)] if profile_name else gpu_profiles()
    for profile in profiles:
        if profile.device != "cuda" or profile.memory_gb <= 0:
            raise FtwError(
                f"profile {profile.name} names no GPU memory, so it has no longest context. "
                f"Give a GPU profile: ftw plan --recipe {recipe.name} --profile rtx4070 --max-context"
            )
    base_model = resolve_model(recipe.model.base, recipe, "model.base")
    config = model_config(base_model)
    shape = planner.ModelShape.from_config(config)
    model_context = int(config.get("max_position_embeddings") or planner.LONGEST_CUTOFF)
    method = "qlora" if bnb_quantization(base_model) else recipe.method
    methods = [method] + (["qlora"] if method == "lora" else [])
    rows = [_longest_row(shape, recipe, profile, each, model_context) for profile in profiles for each in methods]
    return {"recipe": recipe.name, "base_model": base_model, "model_context": model_context, "profiles": rows}


def gpu_profiles() -> list:
    found = [p for p in map(load_profile, shipped_profiles()) if p.device == "cuda" and p.memory_gb > 0]
    return sorted(found, key=lambda p: (p.memory_gb, p.name))


def _longest_row(shape: planner.ModelShape, recipe, profile, method: str, model_context: int) -> dict:
    args, _ = tuned_args(recipe, profile)
    base = planner.settings_from_args(args, method, 1)
    facts = planner.profile_facts(profile)
    kept = planner.longest_cutoff(shape, base, facts, offload=False, cap=model_context)
    offloaded = planner.longest_cutoff(shape, base, facts, offload=True, cap=model_context)
    at_longest = replace(base, micro_batch=1, cutoff=offloaded, checkpointing=True, offload_checkpoints=True)
    return {
        "profile": profile.name,
        "memory_gb": profile.memory_gb,
        "budget_gb": round(facts.budget_gb, 2),
        "method": method,
        "without_offload": kept,
        "with_offload": offloaded,
        "host_ram_gb_with_offload": round(planner.host_ram_gb(shape, at_longest), 2),
        "liger": base.liger,
        "optimizer_8bit": base.optimizer_8bit,
    }
