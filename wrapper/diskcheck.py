"""Free-disk check before export and conversion: stop with the numbers rather than fill the disk."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from wrapper.errors import FtwError

# Average bits per weight of llama.cpp's quant types (for the size estimate only).
QUANT_BITS = {"Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q5_K_M": 5.7, "Q5_K_S": 5.5, "Q6_K": 6.6, "Q8_0": 8.5,
              "Q3_K_M": 3.9, "Q3_K_L": 4.3, "Q2_K": 3.4, "Q4_0": 4.6, "IQ4_XS": 4.3}
MARGIN = 1.05  # headers, tokenizer files, estimate slack


def weights_of(model_dir: Path) -> tuple[int, int]:
    """(bytes, parameters) of a safetensors model folder, from its headers."""
    from wrapper.merge import read_header, weight_files

    size = params = 0
    for path in weight_files(model_dir):
        for info in read_header(path).values():
            size += info.nbytes
            params += math.prod(info.shape)
    return size, params


def gguf_needs(params: int, quants: list[str], outtype: str = "f16") -> dict[str, int]:
    needs = {f"{outtype} GGUF": params * 2}
    for quant in quants:
        needs[f"{quant} GGUF"] = int(params * QUANT_BITS.get(quant.upper(), 8.5) / 8)
    return needs


def export_needs(base_dir: Path, quants: tuple[str, ...] = ("Q4_K_M",)) -> dict[str, int]:
    size, params = weights_of(base_dir)
    return {"merged model": size, **gguf_needs(params, list(quants))}


def check_free_space(where: Path, needs: dict[str, int], what: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    total = sum(needs.values())
    if free < total * MARGIN:
        parts = ", ".join(f"{name} {size / 1e9:.1f} GB" for name, size in needs.items())
        raise FtwError(f"not enough free disk for {what}: it will write about {total * MARGIN / 1e9:.1f} GB "
                       f"({parts}, +{(MARGIN - 1) * 100:.0f}%) under {where}, and {free / 1e9:.1f} GB is free. "
                       f"Free {(total * MARGIN - free) / 1e9:.1f} GB or move the runs folder (FTW_RUNS_DIR).")


def train_needs(plan, existing_bytes: int = 0) -> dict[str, int]:
    """Checkpoints (weights + optimizer states of the trainable parameters) and the final adapter; {} when the
    base's shape is unknown here."""
    from wrapper.planner import ModelShape, model_config

    try:
        shape = ModelShape.from_config(model_config(plan.base_model))
    except (FtwError, OSError, KeyError, ValueError):
        return {}
    args = plan.train_args
    trainable = shape.params if plan.method == "full" else shape.lora_params(int(args.get("lora_rank", 8)))
    optimizer_bytes = 2 if "8bit" in str(args.get("optim", "")) else 8  # AdamW: two fp32 states per parameter
    kept = int(args.get("save_total_limit") or 3) + 1  # the newest is written before the oldest is deleted
    checkpoints = max(0, trainable * (4 + optimizer_bytes) * kept - existing_bytes)
    return {f"{kept} checkpoints": checkpoints, "final adapter": trainable * 4}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0
