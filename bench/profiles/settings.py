"""What the profiles bench measures against and with: the grid's defaults, the targets, the GPUs'
peaks, LLaMA-Factory's example, the --cpu-smoke shape, and the small helpers every part uses."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from tests.support.runner import REPO

GIB = 1024**3
DEFAULT_MODELS = ["Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct"]
DEFAULT_PROFILES = ["rtx3070", "rtx4070", "rtx5080-laptop"]
DEFAULT_CACHE = REPO / ".cache" / "bench-profiles"
DEFAULT_OUT = REPO / "bench" / "results"
FIT_TARGET = 0.92  # of the profile's memory, peak reserved
SPEEDUP_TARGET = 1.5  # ftw tokens/s over the LLaMA-Factory example's, same model and budget
PLANNER_TOLERANCE = 0.15  # |measured peak reserved / planner estimate - 1|
WARMUP_STEPS = 1

# --kinds: which cells of each (model, profile); in this order within a model.
KIND_GROUPS = {
    "ftw": ("ftw",),
    "example": ("llamafactory-example",),
    "max-context": ("max_context", "max_context_plus10"),
}
DEFAULT_KINDS = ["ftw", "example"]  # --cpu-smoke: all of KIND_GROUPS
# max-context cells: the planner's longest cutoff (micro-batch 1, checkpoints offloaded), then +10%.
MAX_CONTEXT_PLUS = 0.10
MAX_CONTEXT_STEPS = 3  # 1 warm-up + 2 timed: the peak is per micro-batch, a few steps show it
MAX_CONTEXT_ACCUM = 2  # keeps accumulation in the loop without 8 micro-batches of 20-40k tokens a step
MAX_CONTEXT_ROWS = 16


# Dense bf16 tensor peaks (TFLOP/s, fp32 accumulate, no sparsity) from the vendors' data
# sheets; the first entry all of whose words are in the device name wins. --peak-tflops overrides.
PEAK_BF16_TFLOPS = [
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H200", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM / HBM3
    (("H200",), 989.0),
    (("A100",), 312.0),
    (("L40S",), 362.0),
    (("RTX", "4090"), 165.2),
]

# LLaMA-Factory's examples/train_lora/qwen3_lora_sft_otfq.yaml (0.9.5), read from the shared
# copy when there is one; this embedded copy must stay identical to it (a test checks).
EXAMPLE_NAME = "qwen3_lora_sft_otfq.yaml"
EXAMPLE_CANDIDATES = [
    REPO / "shared" / "external" / "llamafactory-examples" / EXAMPLE_NAME,
    REPO.parent / "shared" / "external" / "llamafactory-examples" / EXAMPLE_NAME,
]
EMBEDDED_EXAMPLE = {
    "model_name_or_path": "Qwen/Qwen3-4B-Instruct-2507",
    "quantization_bit": 4,
    "quantization_method": "bnb",
    "trust_remote_code": True,
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "lora_rank": 8,
    "lora_target": "all",
    "dataset": "identity,alpaca_en_demo",
    "template": "qwen3_nothink",
    "cutoff_len": 2048,
    "max_samples": 1000,
    "preprocessing_num_workers": 16,
    "dataloader_num_workers": 4,
    "output_dir": "saves/qwen3-4b/lora/sft",
    "logging_steps": 10,
    "save_steps": 500,
    "plot_loss": True,
    "overwrite_output_dir": True,
    "save_only_model": False,
    "report_to": "none",
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "learning_rate": 1.0e-4,
    "num_train_epochs": 3.0,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "bf16": True,
    "ddp_timeout": 180000000,
}

# --cpu-smoke: the real Qwen3-8B config scaled down, a short cutoff, 1 warm-up + 1 timed step.
SMOKE_MODEL = "Qwen/Qwen3-8B"
SMOKE_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
SMOKE_PROFILE = "rtx4070"
SMOKE_CUTOFF = 128
SMOKE_MAX_CONTEXT = 160  # the planner's longest cutoff for the tiny model is its whole context: clamped
SMOKE_STEPS = 2
SMOKE_ACCUM = 2  # effective batch 2 instead of the recipes' 8: a CPU step stays a few seconds

KIND_LABELS = {
    "ftw": "ftw",
    "llamafactory-example": "LF example",
    "max_context": "longest ctx",
    "max_context_plus10": "longest +10%",
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def gpu_slug(name: str) -> str:
    return slug(re.sub(r"(?i)^nvidia\s+", "", name)) or "gpu"


def peak_tflops_for(name: str) -> float | None:
    upper = name.upper()
    for words, tflops in PEAK_BF16_TFLOPS:
        if all(word in upper for word in words):
            return tflops
    return None


def console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_yaml_like_llamafactory(path: Path) -> dict:
    """What `llamafactory-cli train FILE.yaml` reads (OmegaConf, as LLaMA-Factory's read_args)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def example_config() -> tuple[dict, str]:
    for candidate in EXAMPLE_CANDIDATES:
        if candidate.is_file():
            return load_yaml_like_llamafactory(candidate), str(candidate)
    return dict(EMBEDDED_EXAMPLE), "embedded copy in bench/profiles/settings.py"


def versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("torch", "transformers", "llamafactory", "peft", "bitsandbytes", "liger_kernel", "flash_attn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
