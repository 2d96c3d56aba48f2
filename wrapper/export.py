"""Export stage: merge the LoRA into the full-precision base with `llamafactory-cli export`.

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

from wrapper import manifest
from wrapper.errors import FtwError
from wrapper.procs import run_with_status
from wrapper.ui import console, done


def ensure_dequantized_base(source: str, target: Path, log_path: Path) -> None:
    if (target / "config.json").is_file():
        return
    console.print(f"Base {source} is a bitsandbytes 4-bit checkpoint: making a dequantized copy to merge into.")
    run_with_status([sys.executable, "-m", "wrapper.dequantize", source, str(target)], log_path,
                 "dequantizing the base", "dequantize base")


def export(run_dir: Path, force: bool = False) -> Path:
    plan = manifest.plan_of(run_dir)
    adapter = manifest.artifact(run_dir, "adapter", "ftw train")
    merged, partial = plan.merged_dir, run_dir / "merged.partial"
    log_path = run_dir / "logs" / "export.log"
    recorded = manifest.load(run_dir)["artifacts"].get("merged")
    if recorded and merged.is_dir() and not force:
        done(f"already merged: {merged} (use --force to merge again)")
        return merged

    if Path(plan.merge_base) == plan.dequantized_base_dir:
        ensure_dequantized_base(plan.base_model, plan.dequantized_base_dir, log_path)
    manifest.forget_from(run_dir, "merged")
    if partial.exists():
        shutil.rmtree(partial)
    console.print(f"Merging {adapter.name} into {plan.merge_base_source}; full log: {log_path}")
    run_with_status(["llamafactory-cli", "export", str(run_dir / "export.yaml")], log_path,
                 "llamafactory-cli export", "merge")

    # LLaMA-Factory writes its own Modelfile (FROM the HF folder, its own SYSTEM); ours is
    # runs/RUN/Modelfile, from the GGUF. Leaving both invites running the wrong one.
    (partial / "Modelfile").unlink(missing_ok=True)
    if not (partial / "config.json").is_file() or not any(partial.glob("*.safetensors")):
        raise FtwError(f"llamafactory-cli export finished but {partial} has no config.json or weights; see {log_path}")
    if merged.exists():
        shutil.rmtree(merged)
    partial.rename(merged)
    manifest.record_artifacts(run_dir, merged=merged, export_log=log_path)
    done(f"merged model -> {merged}")
    return merged
