"""Base models: where a recipe's model reference points, whether it is a pre-quantized
checkpoint, what full-precision weights a LoRA on it is merged into, and its shapes
(config.json) for the planner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from wrapper.config.recipes import MODEL_CONFIGS
from wrapper.config.schema import Recipe
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import gguf_problem
from wrapper.core.paths import RECIPES_DIR

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Pre-quantized bitsandbytes checkpoints whose full-precision weights sit beside them on the hub.
BNB_SUFFIXES = ("-unsloth-bnb-4bit", "-bnb-4bit")


def resolve_model(ref: str, recipe: Recipe, key: str) -> str:
    """A local model folder (relative to the recipe file) as an absolute path, or a hub id as is."""
    origin = recipe.origin(key)
    candidate = (recipe.folder / Path(ref).expanduser()).resolve()
    looks_local = ref.startswith(("/", "./", "../", "~")) or candidate.exists() or not HUB_ID.fullmatch(ref)
    if not looks_local:
        return ref
    if candidate.is_file():
        raise FtwError(f"{origin}: {not_a_model_folder(candidate)}")
    if not candidate.is_dir():
        hint = " Run `ftw setup` to create the demo model." if "models/" in ref else ""
        raise FtwError(f"{origin}: model folder not found: {candidate}.{hint}")
    if not (candidate / "config.json").is_file():
        raise FtwError(f"{origin}: {candidate} has no config.json; expected a Hugging Face model folder")
    return str(candidate)


def not_a_model_folder(path: Path) -> str:
    """Why a file can't be a base model; a GGUF (what Ollama and LM Studio run) is the usual mistake."""
    training_needs = (
        "LLaMA-Factory trains from a Hugging Face model folder (config.json and safetensors): "
        "set it to a hub id such as Qwen/Qwen3-8B or to a downloaded folder"
    )
    problem = gguf_problem(path)
    if problem is None:
        return (
            f"{path} is a GGUF file, llama.cpp's format for running a model (what Ollama and LM Studio load); "
            f"it can't be fine-tuned. {training_needs}."
        )
    if path.suffix.lower() == ".gguf":
        return f"{path} is named .gguf but {problem}. {training_needs}."
    return f"{path} is a file, not a model folder. {training_needs}."


def bnb_quantization(model: str) -> str | None:
    path = Path(model)
    if path.is_absolute():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        method = (config.get("quantization_config") or {}).get("quant_method")
        return method if method == "bitsandbytes" else None
    return "bitsandbytes" if model.lower().endswith(BNB_SUFFIXES) else None


def full_precision_sibling(hub_id: str) -> str | None:
    owner, name = hub_id.split("/", 1)
    if owner.lower() != "unsloth":
        return None
    for suffix in BNB_SUFFIXES:
        if name.lower().endswith(suffix):
            return f"{owner}/{name[: -len(suffix)]}"
    return None


def choose_merge_base(recipe: Recipe, base_model: str, quantization: str | None, run_dir: Path) -> tuple[str, str]:
    """The full-precision model a LoRA is merged into, and why that one."""
    if quantization is None:
        return base_model, "the base model"
    if recipe.method == "full":
        raise FtwError(
            f"{recipe.origin('method')}: full fine-tuning needs full-precision weights, but "
            f"{base_model} is a pre-quantized {quantization} checkpoint. "
            "Use method: qlora, or its full-precision model."
        )
    if recipe.model.full_precision_base:
        return (
            resolve_model(recipe.model.full_precision_base, recipe, "model.full_precision_base"),
            "model.full_precision_base",
        )
    if not Path(base_model).is_absolute():
        sibling = full_precision_sibling(base_model)
        if sibling:
            return sibling, f"the full-precision sibling of {base_model}"
    # llama.cpp can't read bitsandbytes weights: export makes a dequantized copy to merge into.
    return str(run_dir / "base-dequantized"), f"a dequantized copy of {base_model} (made at export)"


def known_configs() -> dict[str, dict]:
    """config.json of the shipped recipes' models (recipes/models.yaml), for planning without a download."""
    return yaml.safe_load((RECIPES_DIR / MODEL_CONFIGS).read_text(encoding="utf-8"))


def model_config(base_model: str) -> dict:
    """config.json of a local folder, of the HF cache, or the shipped copy in recipes/models.yaml."""
    path = Path(base_model)
    if path.is_absolute():
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_model, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text(encoding="utf-8"))
    except Exception:  # an unusable cache is no reason to stop planning
        pass
    configs = known_configs()
    if base_model in configs:
        return configs[base_model]
    raise FtwError(
        f"can't plan for {base_model}: its config.json is neither local nor in the Hugging Face cache "
        f"nor in recipes/models.yaml. Fetch it with: huggingface-cli download {base_model} config.json"
    )


def local_model_dir(model: str) -> Path | None:
    """A local folder for `model` (a path, or a hub id already in the Hugging Face cache)."""
    if Path(model).is_dir():
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or no hub id): the caller says what then
        return None
