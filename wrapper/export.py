"""Export stage: merge the LoRA into the full-precision base, streamed one tensor at a time
(wrapper/merge.py), or with `llamafactory-cli export` for adapters the streaming merge can't
reproduce exactly.

A LoRA trained on a 4-bit base must not be merged into 4-bit weights: llama.cpp can't
read bitsandbytes tensors, and LLaMA-Factory refuses ("Cannot merge adapters to a
quantized model"). The plan names the full-precision model to merge into; when the
base is a pre-quantized checkpoint with no known full-precision sibling, a dequantized
copy of it is made here first.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from wrapper import manifest, stages
from wrapper.errors import FtwError
from wrapper.procs import run_with_status
from wrapper.ui import console, done


def ensure_dequantized_base(source: str, target: Path, log_path: Path) -> None:
    if (target / "config.json").is_file():
        return
    console.print(f"Base {source} is a bitsandbytes 4-bit checkpoint: making a dequantized copy to merge into.")
    run_with_status([sys.executable, "-m", "wrapper.dequantize", source, str(target)], log_path,
                    "dequantizing the base", "dequantize base", writes_to=target.parent)


# export.yaml keys the streaming merge reproduces (the tokenizer is saved by LLaMA-Factory's
# own code, so template keys are honoured); any other key sends the merge to LLaMA-Factory.
STREAMING_EXPORT_KEYS = {
    "trust_remote_code", "export_size", "export_device", "export_legacy_format", "model_name_or_path",
    "adapter_name_or_path", "export_dir", "finetuning_type", "template", "default_system", "enable_thinking",
    "tool_format", "cache_dir", "hf_hub_token", "use_fast_tokenizer", "split_special_tokens", "flash_attn",
}


def local_model_dir(model: str) -> Path | None:
    """A local folder for `model` (a path, or a hub id already in the Hugging Face cache)."""
    if Path(model).is_dir():
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or no hub id): LLaMA-Factory's export will fetch it
        return None


def streaming_merge_base(plan, adapter: Path) -> tuple[Path | None, str]:
    """(the base folder to stream from, "") or (None, why LLaMA-Factory must merge instead)."""
    import yaml

    from wrapper.merge import plan_merge

    args = yaml.safe_load((plan.dir / "export.yaml").read_text(encoding="utf-8")) or {}
    if args.get("finetuning_type") != "lora":
        return None, f"finetuning_type is {args.get('finetuning_type')!r}, not lora"
    extra = sorted(key for key, value in args.items() if key not in STREAMING_EXPORT_KEYS and value is not None)
    if extra:
        return None, f"export.yaml sets {', '.join(extra)}"
    if "," in str(args.get("adapter_name_or_path", "")):
        return None, "several adapters are merged"
    base_dir = local_model_dir(str(args.get("model_name_or_path", plan.merge_base)))
    if base_dir is None:
        return None, f"{plan.merge_base} is not on this disk yet"
    found = plan_merge(base_dir, adapter)
    if isinstance(found, str):
        return None, found
    return base_dir, ""


def check_disk_for_export(run_dir: Path, base_dir: Path | None) -> None:
    from wrapper.diskcheck import check_free_space, export_needs

    if base_dir is not None and any(base_dir.glob("*.safetensors")):
        check_free_space(run_dir, export_needs(base_dir), "ftw export (merged model, then the GGUF files)")


# Where the run's own folder is; the adapter's content is an input of its own.
RUN_LOCATION_KEYS = {"adapter_name_or_path", "export_dir"}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def export_inputs(plan, adapter: Path, weights_dtype: str) -> stages.StageInputs:
    """The adapter, the export settings, the base it is merged into and how the weights are stored."""
    import yaml

    args = yaml.safe_load((plan.dir / "export.yaml").read_text(encoding="utf-8")) or {}
    values = {f"export.yaml {key}": stages.short_value(value) for key, value in args.items()
              if key not in RUN_LOCATION_KEYS}
    values["adapter"] = stages.folder_digest(adapter, ADAPTER_FILES)
    # A dequantized base is made from the quantized one: that one is the input.
    base = plan.base_model if Path(plan.merge_base) == plan.dequantized_base_dir else plan.merge_base
    base_dir = local_model_dir(base)
    values["base model"] = stages.folder_digest(base_dir) if base_dir else base
    values["weights dtype"] = weights_dtype
    return stages.StageInputs("merged", values)


def export(run_dir: Path, force: bool = False, weights_dtype: str = "f16") -> Path:
    plan = manifest.plan_of(run_dir)
    adapter = manifest.artifact(run_dir, "adapter", "ftw train")
    merged, partial = plan.merged_dir, run_dir / "merged.partial"
    log_path = run_dir / "logs" / "export.log"
    recorded = manifest.load(run_dir)["artifacts"].get("merged")
    inputs = export_inputs(plan, adapter, weights_dtype)
    if recorded and merged.is_dir() and not force:
        changes = inputs.changes_from(stages.recorded_inputs(run_dir, inputs.key))
        if not changes:
            thinned = "merged" in manifest.removed_intermediates(run_dir)
            note = " (its weights were removed after quantization)" if thinned else ""
            done(f"merged model up to date: {merged}{note} (--force merges again)")
            return merged
        console.print(f"Merging again: changed since the last merge: {stages.describe(changes)}", soft_wrap=True)

    if Path(plan.merge_base) == plan.dequantized_base_dir:
        ensure_dequantized_base(plan.base_model, plan.dequantized_base_dir, log_path)
    manifest.forget_from(run_dir, "merged")
    if partial.exists():
        shutil.rmtree(partial)
    base_dir, reason = streaming_merge_base(plan, adapter)
    check_disk_for_export(run_dir, base_dir or local_model_dir(plan.merge_base))
    try:
        what = merge_into(partial, plan, adapter, base_dir, reason, log_path, weights_dtype)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # stopped or failed: nothing half-merged stays behind
        raise

    # LLaMA-Factory writes its own Modelfile (FROM the HF folder, its own SYSTEM); ours is
    # runs/RUN/Modelfile, from the GGUF. Leaving both invites running the wrong one.
    (partial / "Modelfile").unlink(missing_ok=True)
    if not (partial / "config.json").is_file() or not any(partial.glob("*.safetensors")):
        raise FtwError(f"{what} finished but {partial} has no config.json or weights; see {log_path}")
    if merged.exists():
        shutil.rmtree(merged)
    partial.rename(merged)
    manifest.record_artifacts(run_dir, merged=merged, export_log=log_path)
    stages.record_inputs(run_dir, inputs)
    done(f"merged model -> {merged}")
    return merged


def merge_into(partial: Path, plan, adapter: Path, base_dir: Path | None, reason: str, log_path: Path,
               weights_dtype: str) -> str:
    """Write the merged model into `partial`; return which way it was merged."""
    if base_dir is not None:
        console.print(f"Merging {adapter.name} into {plan.merge_base_source}, one tensor at a time "
                      f"(streaming merge, no GPU needed); full log: {log_path}")
        run_with_status([sys.executable, "-m", "wrapper.merge", "weights", str(base_dir), str(adapter), str(partial),
                         weights_dtype], log_path, "streaming merge", "merge", writes_to=partial)
        run_with_status([sys.executable, "-m", "wrapper.merge", "tokenizer", str(plan.dir / "export.yaml"), str(partial)],
                        log_path, "saving the tokenizer", "tokenizer", writes_to=partial)
        what = "the streaming merge"
    else:
        console.print(f"The streaming merge can't merge this exactly ({reason}): merging with "
                      f"llamafactory-cli export instead, which loads the whole model into memory.", soft_wrap=True)
        console.print(f"Merging {adapter.name} into {plan.merge_base_source}; full log: {log_path}")
        run_with_status(["llamafactory-cli", "export", str(plan.dir / "export.yaml")], log_path,
                        "llamafactory-cli export", "merge", writes_to=partial)
        what = "llamafactory-cli export"
    return what
