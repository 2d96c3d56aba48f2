"""The model card (README.md) of a published run: the metadata the Hub reads, written by
huggingface_hub's ModelCardData, and a body from templates/publish/README.md.j2 that says what
was trained, how it scored (eval.json, aggregates only) and how to run it.

Nothing of the training data goes in: the card names counts, languages and settings, never rows,
file names or local paths (the data itself is uploaded only with --include-data).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.config.models import HUB_ID
from wrapper.core.errors import FtwError
from wrapper.core.eval_result import EVAL_JSON, SETS, EvalResult, quant_of
from wrapper.core.plan import RunPlan
from wrapper.core.templates import template_env
from wrapper.core.ui import step
from wrapper.data.langs import language_of
from wrapper.data.prepared import load_prepared
from wrapper.data.samples import conversations

CARD_TEMPLATE = "publish/README.md.j2"
# A LoRA merged into its base and quantized is a fine-tune of that base: its weights were trained.
# The Hub infers the relation when none is set (huggingface/hub-docs, docs/hub/model-cards.md:
# "The Hub will infer the type of relationship from the current model to the base model ("adapter",
# "merge", "quantized", "finetune") but you can also set it explicitly"), and a repository of GGUF
# files reads as "quantized", which would list this model among the base's own quantizations.
BASE_MODEL_RELATION = "finetune"
PIPELINE_TAG = "text-generation"
# The Hub's library filter for GGUF repositories (huggingface.co/models?library=gguf, the one its
# Ollama documentation links to).
LIBRARY_NAME = "gguf"
HUB_TIMEOUT_S = 10
LANGUAGE_SAMPLE_ROWS = 5000  # rows whose language is guessed where `ftw data prepare` counted none
EVAL_SETS = SETS
EVAL_METRICS = ("contains", "token_f1", "rouge_l", "key_info_recall")


@dataclass(frozen=True)
class BaseModel:
    """The model the run was fine-tuned from, as the card names it."""

    hub_id: str | None  # the `base_model` metadata; None for a local folder without --base-model
    name: str  # how the text names it: the hub id, or the local folder's name (never its path)
    license: dict[str, str] = field(default_factory=dict)  # license, and license_name/_link for "other"
    license_from: str = ""


def is_hub_id(ref: str | None) -> bool:
    return bool(ref) and not Path(ref).is_absolute() and HUB_ID.fullmatch(ref) is not None


def base_of(plan: RunPlan, hub_id: str | None, license_id: str | None) -> BaseModel:
    """The base: --base-model, else the full-precision model the LoRA was merged into, else the trained base."""
    local = next((Path(ref) for ref in (plan.merge_base, plan.base_model) if ref and Path(ref).is_absolute()), None)
    hub_id = hub_id or next((ref for ref in (plan.merge_base, plan.base_model) if is_hub_id(ref)), None)
    name = hub_id or (local.name if local else plan.base_model)
    if license_id:
        return BaseModel(hub_id, name, {"license": license_id}, "--license")
    found, source = base_license(hub_id, local)
    return BaseModel(hub_id, name, found, source)


def base_license(hub_id: str | None, local: Path | None) -> tuple[dict[str, str], str]:
    """The base's license from its own card: a local folder's README.md, the Hugging Face cache, the Hub."""
    from huggingface_hub import ModelCard, constants, try_to_load_from_cache

    readmes = []
    if local is not None and (local / "README.md").is_file():
        readmes.append((local / "README.md", f"{local.name}/README.md"))
    if hub_id:
        cached = try_to_load_from_cache(hub_id, "README.md")
        if isinstance(cached, str):
            readmes.append((Path(cached), f"{hub_id}'s card (Hugging Face cache)"))
    for path, source in readmes:
        found = license_fields(ModelCard.load(path, ignore_metadata_errors=True).data)
        if found:
            return found, source
    if hub_id and not constants.HF_HUB_OFFLINE:
        found = hub_card_license(hub_id)
        if found:
            return found, f"{hub_id}'s card on the Hub"
    return {}, ""


def hub_card_license(hub_id: str) -> dict[str, str]:
    """The license in the base's card on the Hub: one request, no retries (a download would retry for ~30 s)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(hub_id, expand=["cardData"], timeout=HUB_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - unreachable Hub, a gated or missing repository: the license stays unknown
        return {}
    return license_fields(info.card_data) if info.card_data else {}


def base_notes(base: BaseModel, run: str, repo_id: str) -> list[str]:
    """What the card will lack, and the option that supplies it."""
    again = f"ftw publish --run {run} --repo {repo_id}"
    notes = []
    if not base.hub_id:
        notes.append(
            f"the base model is a local folder ({base.name}), so the card has no base_model and the Hub won't link "
            f"this fine-tune to it. Name it: {again} --base-model ORG/NAME"
        )
    if not base.license:
        notes.append(f"the base model's license could not be read, so the card has none. Give it: {again} --license ID")
    return notes


def license_line(base: BaseModel) -> str:
    """The card's license sentence: the identifier, a custom license's name and link, and where it came from."""
    found = base.license
    if not found:
        return ""
    extra = ", ".join(found[key] for key in ("license_name", "license_link") if key in found)
    source = "as given to ftw publish" if base.license_from == "--license" else f"from {base.license_from}"
    return f"`{found['license']}`" + (f" ({extra})" if extra else "") + f", {source}"


def license_fields(data) -> dict[str, str]:
    keys = ("license", "license_name", "license_link") if data.license == "other" else ("license",)
    return {key: getattr(data, key) for key in keys if getattr(data, key, None)}


# ---- what was trained ------------------------------------------------------------------


def training_languages(run_dir: Path, plan: RunPlan) -> list[str]:
    """ISO 639-1 codes of the training rows, most rows first: `ftw data prepare`'s counts, else a guess
    on up to LANGUAGE_SAMPLE_ROWS rows. A language needs 1% of the rows (stray guesses stay out)."""
    prepared = load_prepared(run_dir) if plan.prepared_data else None
    if prepared is not None:
        counts = Counter(prepared.info.get("split", {}).get("train", {}))
    else:
        files = [Path(dataset["path"]) for dataset in plan.datasets]
        rows = [row for path in files if path.is_file() for row in conversations(path)]  # moved files: unknown
        every = max(1, len(rows) // LANGUAGE_SAMPLE_ROWS)
        counts = Counter(language_of(row_text(row.turns)) for row in rows[::every])
    total = sum(counts.values())
    return [lang for lang, n in counts.most_common() if lang != "unknown" and n * 100 >= total]


def row_text(turns: list[dict]) -> str:
    return "\n".join(turn["content"] for turn in turns[:2])


def rows_facts(plan: RunPlan) -> list[tuple[str, str]]:
    """The rows trained, and apart from them the validation rows (`ftw data prepare`'s probes): never trained."""
    held_out = plan.train_args.get("eval_dataset")
    trained = [d for d in plan.datasets if d["name"] != held_out]
    facts = [("rows", f"{sum(d['rows'] for d in trained)} in {len(trained)} file(s)")]
    facts += [("validation rows", f"{d['rows']}, held out (never trained)") for d in plan.datasets if d not in trained]
    return facts


def training_facts(run_dir: Path, plan: RunPlan, languages: list[str]) -> list[tuple[str, str]]:
    """(what, value) lines of the card's training table."""
    args = plan.train_args
    facts = [("recipe", plan.recipe), ("method", plan.method), ("stage", str(args.get("stage", "sft")))]
    if plan.method != "full":
        facts.append(
            ("LoRA", f"rank {args.get('lora_rank')}, alpha {args.get('lora_alpha')}, target {args.get('lora_target')}")
        )
    if plan.base_quantization:
        facts.append(
            ("base loaded as", f"{plan.base_quantization} 4-bit (QLoRA); merged into {plan.merge_base_source}")
        )
    batch = args.get("per_device_train_batch_size", 1) * args.get("gradient_accumulation_steps", 1) * plan.gpus
    facts += [
        ("epochs", str(args.get("num_train_epochs"))),
        ("learning rate", f"{args.get('learning_rate')} ({args.get('lr_scheduler_type', 'linear')})"),
        ("batch", f"{batch} rows per step"),
        ("cutoff", f"{args.get('cutoff_len')} tokens"),
        *rows_facts(plan),
        ("languages", ", ".join(languages) or "not known"),
        ("chat format", f"LLaMA-Factory's `{plan.template}` template"),
    ]
    results = run_dir / "adapter" / "train_results.json"
    if results.is_file():
        done = json.loads(results.read_text(encoding="utf-8"))
        if done.get("train_loss") is not None:
            facts.append(("mean training loss", f"{done['train_loss']:.4f}"))
    return facts


# ---- evaluation ------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalTable:
    header: list[str]
    rows: list[list[str]]
    notes: list[str]


def eval_table(run_dir: Path, gguf: Path) -> EvalTable | None:
    """The aggregate table of eval.json (no rows, no answers), or None without a current eval.json."""
    path = run_dir / EVAL_JSON
    if not path.is_file():
        return None
    if path.stat().st_mtime < gguf.stat().st_mtime:
        step(
            f"  note: {path} is older than {gguf.name}, so the card leaves the evaluation out. "
            f"To include it: ftw eval --run {run_dir.name}",
        )
        return None
    result = EvalResult.load(run_dir)
    models = result.kinds
    titles = {kind: card_title(kind, result) for kind in models}
    rows = []
    for set_name in EVAL_SETS:
        block = result.aggregate.get(set_name, {})
        if not block.get("base", {}).get("rows"):
            continue
        for metric in EVAL_METRICS:
            values = [block.get(model, {}).get(metric) for model in models]
            if any(value is not None for value in values):
                rows.append([f"{set_name} ({block['base']['rows']})", metric, *map(number, values)])
    return EvalTable(["set (rows)", "metric", *(titles[m] for m in models)], rows, eval_notes(result))


def card_title(kind: str, result: EvalResult) -> str:
    """A model's column: a quantized GGUF by its file's name (the file the reader downloads)."""
    if quant_of(kind):
        return f"fine-tuned ({Path(result.models[kind]).name})"
    return {"base": "base", "merged": "fine-tuned (HF)", "lora": "base GGUF + LoRA adapter GGUF"}[kind]


def number(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def eval_notes(result: EvalResult) -> list[str]:
    notes = [f"Evaluated {result.evaluated_at[:10]} with greedy decoding."]
    forgetting = result.forgetting
    if forgetting.get("known_by_base"):
        merged = f"{forgetting['merged']['forgotten']} (HF) and " if "merged" in forgetting else ""
        one = len(result.gguf_kinds) == 1
        ggufs = ", ".join(
            f"{forgetting[kind]['forgotten']} ({'GGUF' if one else quant_of(kind)})"
            for kind in result.gguf_kinds
            if kind in forgetting
        )
        notes.append(
            f"Forgetting: of {forgetting['known_by_base']} general prompts the base model answered, the fine-tune "
            f"forgot {merged}{ggufs}."
        )
    return notes


# ---- the card --------------------------------------------------------------------------


def card_metadata(base: BaseModel, languages: list[str], method: str):
    from huggingface_hub import ModelCardData

    tags = ["gguf", "llama.cpp", "ollama", "llama-factory", "ftw"]
    tags.append("lora" if method in ("lora", "qlora") else "full-finetune")
    extra = {"base_model_relation": BASE_MODEL_RELATION} if base.hub_id else {}
    return ModelCardData(
        base_model=base.hub_id,
        language=languages or None,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
        **base.license,
        **extra,
    )


def render_card(**values) -> str:
    """README.md: the metadata block (ModelCardData's YAML) and the body from templates/publish/."""
    metadata = card_metadata(values["base"], values["languages"], values["plan"].method)
    return template_env().get_template(CARD_TEMPLATE).render(card_data=metadata.to_yaml(), **values)


def check_card(text: str) -> None:
    """Read the card back as the Hub's library does; a metadata block it refuses stops the stage."""
    from huggingface_hub import ModelCard

    try:
        ModelCard(text)
    except ValueError as exc:
        raise FtwError(f"the model card's metadata does not read back: {exc}") from None
