"""Export stage: merge the LoRA into the full-precision base, streamed one tensor at a time
(wrapper/export/merge.py), or with `llamafactory-cli export` for adapters the streaming merge
can't reproduce exactly.

A LoRA trained on a 4-bit base must not be merged into 4-bit weights: llama.cpp can't
read bitsandbytes tensors, and LLaMA-Factory refuses ("Cannot merge adapters to a
quantized model"). The plan names the full-precision model to merge into; when the
base is a pre-quantized checkpoint with no known full-precision sibling, a dequantized
copy of it is made here first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from wrapper.config.models import local_model_dir
from wrapper.core import artifacts, manifest, stage
from wrapper.core.disk import check_free_space
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import DEFAULT_QUANT, QUANT_BITS
from wrapper.core.plan import ADAPTER_FILES
from wrapper.core.procs import run_with_status
from wrapper.core.safetensors_io import model_weights
from wrapper.core.ui import step
from wrapper.export.merge import NotStreamable, plan_merge

# export.yaml keys the streaming merge reproduces (the tokenizer is saved by LLaMA-Factory's
# own code, so template keys are honoured); any other key sends the merge to LLaMA-Factory.
STREAMING_EXPORT_KEYS = {
    "trust_remote_code",
    "export_size",
    "export_device",
    "export_legacy_format",
    "model_name_or_path",
    "adapter_name_or_path",
    "export_dir",
    "finetuning_type",
    "template",
    "default_system",
    "enable_thinking",
    "tool_format",
    "cache_dir",
    "hf_hub_token",
    "use_fast_tokenizer",
    "split_special_tokens",
    "flash_attn",
}
# Where the run's own folder is; the adapter's content is an input of its own.
RUN_LOCATION_KEYS = {"adapter_name_or_path", "export_dir"}


def export_needs(base_dir: Path) -> dict[str, int]:
    """What the merge and the GGUF files after it write: the merged model, the f16 GGUF and a Q4_K_M."""
    size, params = model_weights(base_dir)
    return {
        "merged model": size,
        "f16 GGUF": params * 2,
        f"{DEFAULT_QUANT} GGUF": int(params * QUANT_BITS[DEFAULT_QUANT] / 8),
    }


class ExportStage:
    title = "merged model"
    force_says = "merges again"

    def __init__(self, run_dir: Path, weights_dtype: str = "f16"):
        self.plan = manifest.plan_of(run_dir)
        self.run_dir, self.key, self.target = run_dir, artifacts.MERGED, self.plan.merged_dir
        self.weights_dtype = weights_dtype
        self.adapter = manifest.artifact(run_dir, artifacts.ADAPTER)
        self.export_yaml = self.plan.dir / "export.yaml"
        self.args = yaml.safe_load(self.export_yaml.read_text(encoding="utf-8")) or {}
        self.log_path = run_dir / "logs" / "export.log"
        self.logs = {artifacts.EXPORT_LOG: self.log_path}
        self.merged_by = ""

    def inputs(self) -> stage.StageInputs:
        """The adapter, the export settings, the base it is merged into and how the weights are stored."""
        values = {
            f"export.yaml {key}": stage.short_value(value)
            for key, value in self.args.items()
            if key not in RUN_LOCATION_KEYS
        }
        values["adapter"] = stage.folder_digest(self.adapter, ADAPTER_FILES)
        # A dequantized base is made from the quantized one: that one is the input.
        plan = self.plan
        base = plan.base_model if Path(plan.merge_base) == plan.dequantized_base_dir else plan.merge_base
        base_dir = local_model_dir(base)
        values["base model"] = stage.folder_digest(base_dir) if base_dir else base
        values["weights dtype"] = self.weights_dtype
        return stage.StageInputs(self.key, values)

    def streaming_base(self) -> Path:
        """The base folder the streaming merge reads; raises NotStreamable when LLaMA-Factory must merge."""
        args = self.args
        if args.get("finetuning_type") != "lora":
            raise NotStreamable(f"finetuning_type is {args.get('finetuning_type')!r}, not lora")
        extra = sorted(key for key, value in args.items() if key not in STREAMING_EXPORT_KEYS and value is not None)
        if extra:
            raise NotStreamable(f"export.yaml sets {', '.join(extra)}")
        if "," in str(args.get("adapter_name_or_path", "")):
            raise NotStreamable("several adapters are merged")
        base_dir = local_model_dir(str(args.get("model_name_or_path", self.plan.merge_base)))
        if base_dir is None:
            raise NotStreamable(f"{self.plan.merge_base} is not on this disk yet")
        plan_merge(base_dir, self.adapter)
        return base_dir

    def make(self, partial: Path) -> None:
        plan = self.plan
        if Path(plan.merge_base) == plan.dequantized_base_dir:
            ensure_dequantized_base(plan.base_model, plan.dequantized_base_dir, self.log_path)
        try:
            base_dir, reason = self.streaming_base(), ""
        except NotStreamable as why:
            base_dir, reason = None, str(why)
        disk_base = base_dir or local_model_dir(plan.merge_base)
        if disk_base is not None and any(disk_base.glob("*.safetensors")):
            check_free_space(self.run_dir, export_needs(disk_base), "ftw export (merged model, then the GGUF files)")
        if base_dir is not None:
            self.merge_streaming(base_dir, partial)
        else:
            self.merge_with_llamafactory(reason, partial)
        # LLaMA-Factory writes its own Modelfile (FROM the HF folder, its own SYSTEM); ours is
        # runs/RUN/Modelfile, from the GGUF. Leaving both invites running the wrong one.
        (partial / "Modelfile").unlink(missing_ok=True)

    def merge_streaming(self, base_dir: Path, partial: Path) -> None:
        step(
            f"Merging {self.adapter.name} into {self.plan.merge_base_source}, one tensor at a time "
            f"(streaming merge, no GPU needed); full log: {self.log_path}"
        )
        run_with_status(
            [
                sys.executable,
                "-m",
                "wrapper.export.merge",
                "weights",
                str(base_dir),
                str(self.adapter),
                str(partial),
                self.weights_dtype,
            ],
            self.log_path,
            "streaming merge",
            "merge",
            writes_to=partial,
        )
        run_with_status(
            [sys.executable, "-m", "wrapper.export.merge", "tokenizer", str(self.export_yaml), str(partial)],
            self.log_path,
            "saving the tokenizer",
            "tokenizer",
            writes_to=partial,
        )
        self.merged_by = "the streaming merge"

    def merge_with_llamafactory(self, reason: str, partial: Path) -> None:
        # export.yaml's export_dir is runs/RUN/merged.partial: LLaMA-Factory writes the partial itself.
        step(
            f"The streaming merge can't merge this exactly ({reason}): merging with "
            f"llamafactory-cli export instead, which loads the whole model into memory.",
        )
        step(f"Merging {self.adapter.name} into {self.plan.merge_base_source}; full log: {self.log_path}")
        run_with_status(
            ["llamafactory-cli", "export", str(self.export_yaml)],
            self.log_path,
            "llamafactory-cli export",
            "merge",
            writes_to=partial,
        )
        self.merged_by = "llamafactory-cli export"

    def verify(self, partial: Path) -> str:
        if not (partial / "config.json").is_file() or not any(partial.glob("*.safetensors")):
            raise FtwError(
                f"{self.merged_by} finished but {partial} has no config.json or weights; see {self.log_path}"
            )
        return ""


def ensure_dequantized_base(source: str, target: Path, log_path: Path) -> None:
    if (target / "config.json").is_file():
        return
    step(f"Base {source} is a bitsandbytes 4-bit checkpoint: making a dequantized copy to merge into.")
    run_with_status(
        [sys.executable, "-m", "wrapper.export.dequantize", source, str(target)],
        log_path,
        "dequantizing the base",
        "dequantize base",
        writes_to=target.parent,
    )


def export(run_dir: Path, force: bool = False, weights_dtype: str = "f16") -> Path:
    return stage.run_atomic(ExportStage(run_dir, weights_dtype), force)
