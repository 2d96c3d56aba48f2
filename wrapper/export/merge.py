"""Streaming LoRA merge: base safetensors -> merged safetensors, one tensor at a time.

Each merged weight is W + scaling * (B @ A), as PEFT's merge_and_unload computes it
(peft/tuners/lora/layer.py, Linear.get_delta_weight and merge): the factors in float32,
scaling = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), added to the base
weight in float32 and rounded once to the base tensor's dtype.

Memory: tensors are read with positioned reads from the safetensors files
(wrapper/core/safetensors_io.py), never through a whole-file load. A tensor the adapter
doesn't touch is copied in fixed-size chunks without being decoded; an adapted one is
merged in blocks of rows. The output shards mirror the base's, and since a merged tensor
keeps its base tensor's shape and its stored dtype follows from the base's (below), each
shard's header is known before any data is
written: tensors go to disk as they are computed.

Stored dtype: with weights_dtype "f16" (the default, for the f16 GGUF) every 2-D
weight is rounded to the base's dtype as above, then stored as float16 - the cast
llama.cpp's converter makes anyway when it writes an f16 GGUF (bf16 -> f32 -> f16, in
conversion/base.py), so the GGUF is bit-identical. Done here, one block at a time, it
spares the converter its float32 copy of each whole tensor: 6 bytes per parameter of the
largest one (3.7 GB for Qwen3-8B's embedding) become 2, read from the file. 1-D tensors
keep the base's dtype (the converter writes them as float32). config.json keeps the
base's dtype, so transformers loads the weights back to the same bf16 values. A weight
beyond float16's range stops the merge with what to do instead. weights_dtype "base"
stores everything in the base's dtype, as PEFT does.

Adapters this can't merge exactly (DoRA, LoRA biases, alpha patterns, tied embeddings
touched by the adapter, anything unrecognised) make one of `plan_merge`'s named checks
raise NotStreamable with the reason, and the export falls back to `llamafactory-cli export`.

Run as a child of the export stage:
  python -m wrapper.export.merge weights BASE_DIR ADAPTER_DIR OUT_DIR [f16|base]
  python -m wrapper.export.merge tokenizer EXPORT_YAML OUT_DIR   (LLaMA-Factory's tokenizer + template fix)
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_exact
from wrapper.core.safetensors_io import ST_DTYPES, ST_ITEMSIZE, TensorInfo, read_header, read_tensor, weight_files

PREFIX = "base_model.model."
COPY_CHUNK = 64 * 2**20
BLOCK_BYTES = 32 * 2**20  # float32 bytes of one block of rows while merging
WEIGHTS_DTYPES = ("f16", "base")
CONFIG_FILES = ("config.json", "generation_config.json")
# adapter_config.json keys that change the math beyond W + scaling * B @ A when set.
UNSUPPORTED_WHEN_SET = (
    "use_dora",
    "lora_bias",
    "alpha_pattern",
    "layer_replication",
    "use_qalora",
    "alora_invocation_tokens",
    "target_parameters",
    "trainable_token_indices",
    "arrow_config",
)
# PEFT's names for the two LoRA factors: (suffix, which factor, of an embedding)
FACTOR_SUFFIXES = (
    (".lora_A.weight", "a", False),
    (".lora_B.weight", "b", False),
    (".lora_embedding_A", "a", True),
    (".lora_embedding_B", "b", True),
)


class NotStreamable(Exception):
    """Why this adapter can't be merged exactly here (a sentence); LLaMA-Factory merges it instead."""


@dataclass
class Target:
    """What happens to one base tensor: LoRA factors to add, or a full replacement."""

    a: str | None = None
    b: str | None = None
    embedding: bool = False
    replacement: str | None = None


@dataclass
class MergePlan:
    base: dict[str, TensorInfo]
    adapter: dict[str, TensorInfo]
    targets: dict[str, Target] = field(default_factory=dict)
    scaling_alpha: float = 0.0
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    tied: bool = False  # the model ties its input and output embeddings


# --- deciding whether (and how) the adapter can be merged here ---------------------------
# Each check raises NotStreamable with the reason, or returns what the next one needs.


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def base_config(base_dir: Path) -> dict[str, Any]:
    config = _load_json(base_dir / "config.json")
    if not config:
        raise NotStreamable(f"{base_dir} has no config.json")
    if config.get("quantization_config"):
        raise NotStreamable("the base is a quantized checkpoint")
    return config


def base_weight_files(base_dir: Path) -> list[Path]:
    files = weight_files(base_dir)
    if not files:
        raise NotStreamable(f"{base_dir} has no safetensors weights")
    return files


def lora_config(adapter_dir: Path) -> dict[str, Any]:
    config = _load_json(adapter_dir / "adapter_config.json")
    if config.get("peft_type") != "LORA":
        raise NotStreamable(f"the adapter is not a PEFT LoRA (peft_type {config.get('peft_type')!r})")
    for key in UNSUPPORTED_WHEN_SET:
        if config.get(key):
            raise NotStreamable(f"the adapter uses {key}={config[key]!r}, which the streaming merge doesn't implement")
    return config


def adapter_weight_file(adapter_dir: Path) -> Path:
    adapter_file = adapter_dir / "adapter_model.safetensors"
    if not adapter_file.is_file():
        raise NotStreamable("the adapter has no adapter_model.safetensors")
    return adapter_file


def known_dtypes(tensors: dict[str, TensorInfo]) -> None:
    for name, info in tensors.items():
        if info.dtype not in ST_DTYPES:
            raise NotStreamable(f"tensor {name} has dtype {info.dtype}, which the streaming merge doesn't handle")


def untied(plan: MergePlan, name: str) -> None:
    if plan.tied and ("embed_tokens" in name or name.startswith("lm_head")):
        raise NotStreamable(f"the adapter changes {name} and the model ties its input and output embeddings")


def assign(plan: MergePlan, key: str) -> None:
    """Put one adapter tensor where it belongs: a LoRA factor of a base weight, or a full saved copy."""
    if not key.startswith(PREFIX):
        raise NotStreamable(f"unrecognised adapter tensor {key}")
    rest = key[len(PREFIX) :]
    untied(plan, rest)
    if rest in plan.base:  # a modules_to_save copy (PEFT saves it under the module's own name)
        plan.targets.setdefault(rest, Target()).replacement = key
        return
    if ".modules_to_save." in rest:
        module, _, param = rest.partition(".modules_to_save.")
        param = param.split(".", 1)[1] if param.count(".") else param  # drop an adapter name if saved
        plan.targets.setdefault(f"{module}.{param}", Target()).replacement = key
        return
    for suffix, factor, embedding in FACTOR_SUFFIXES:
        if rest.endswith(suffix):
            target = plan.targets.setdefault(rest[: -len(suffix)] + ".weight", Target())
            setattr(target, factor, key)
            target.embedding = embedding
            return
    raise NotStreamable(f"unrecognised adapter tensor {key}")


def fits_its_base(plan: MergePlan, name: str, target: Target) -> None:
    """The factors (or the copy) have the shape the base weight needs."""
    if name not in plan.base:
        raise NotStreamable(f"the adapter changes {name}, which the base's safetensors don't hold under that name")
    untied(plan, name)
    info = plan.base[name]
    if target.replacement:
        if target.a or target.b:
            raise NotStreamable(f"{name} has both LoRA factors and a full saved copy")
        if plan.adapter[target.replacement].shape != info.shape:
            raise NotStreamable(
                f"the adapter's copy of {name} has shape {plan.adapter[target.replacement].shape}, "
                f"the base's {info.shape}"
            )
        return
    if not (target.a and target.b):
        raise NotStreamable(f"the adapter has only one LoRA factor for {name}")
    a, b = plan.adapter[target.a].shape, plan.adapter[target.b].shape
    if len(info.shape) != 2 or len(a) != 2 or len(b) != 2:
        raise NotStreamable(f"{name} is not a 2-D weight")
    rows, cols = info.shape
    if target.embedding:  # lora_embedding_A (r, num_embeddings), lora_embedding_B (dim, r); delta = (B @ A).T
        ok = a[0] == b[1] and a[1] == rows and b[0] == cols
    elif plan.fan_in_fan_out:
        ok = a[0] == b[1] and b[0] == cols and a[1] == rows
    else:
        ok = a[0] == b[1] and b[0] == rows and a[1] == cols
    if not ok:
        raise NotStreamable(f"LoRA factor shapes {a}, {b} don't fit {name} {info.shape}")


def plan_merge(base_dir: Path, adapter_dir: Path) -> MergePlan:
    """How to merge this adapter into this base, tensor by tensor; raises NotStreamable with the reason
    this adapter must be merged by LLaMA-Factory instead."""
    config = base_config(base_dir)
    files = base_weight_files(base_dir)
    adapter_config = lora_config(adapter_dir)
    adapter_file = adapter_weight_file(adapter_dir)
    base = {name: info for path in files for name, info in read_header(path).items()}
    adapter = read_header(adapter_file)
    known_dtypes({**base, **adapter})
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings", False))
    plan = MergePlan(
        base=base,
        adapter=adapter,
        scaling_alpha=float(adapter_config.get("lora_alpha") or 8),
        use_rslora=bool(adapter_config.get("use_rslora")),
        fan_in_fan_out=bool(adapter_config.get("fan_in_fan_out")),
        tied=bool(tied),
    )
    for key in adapter:
        assign(plan, key)
    for name, target in plan.targets.items():
        fits_its_base(plan, name, target)
    if not plan.targets:
        raise NotStreamable("the adapter holds no LoRA weights")
    return plan


def scaling(plan: MergePlan, rank: int) -> float:
    return plan.scaling_alpha / (math.sqrt(rank) if plan.use_rslora else rank)


# --- writing ---------------------------------------------------------------------------


def stored_dtype(info: TensorInfo, weights_dtype: str) -> str:
    """The safetensors dtype a merged tensor is written in (see the module docstring)."""
    if weights_dtype == "f16" and len(info.shape) >= 2 and info.dtype in ("BF16", "F32"):
        return "F16"
    return info.dtype


def stored_nbytes(info: TensorInfo, dtype: str) -> int:
    return info.nbytes // ST_ITEMSIZE[info.dtype] * ST_ITEMSIZE[dtype]


def _header_bytes(stored: dict[str, str], base: dict[str, TensorInfo]) -> bytes:
    """The header of a shard holding the tensors of `stored` (name -> stored dtype), in that order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype in stored.items():
        info = base[name]
        size = stored_nbytes(info, dtype)
        header[name] = {"dtype": dtype, "shape": info.shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _copy_bytes(info: TensorInfo, out) -> None:
    with info.file.open("rb") as source:
        source.seek(info.start)
        left = info.nbytes
        while left:
            chunk = source.read(min(COPY_CHUNK, left))
            out.write(chunk)
            left -= len(chunk)


def _write_tensor(tensor, out) -> None:
    import torch

    out.write(memoryview(tensor.contiguous().view(torch.uint8).numpy()))  # no extra bytes copy


def _store(tensor, name: str, dtype: str):
    """`tensor` (already in the base's dtype) cast to the stored dtype; float16 must hold it."""
    import torch

    stored = tensor.to(getattr(torch, ST_DTYPES[dtype]))
    if dtype == "F16" and tensor.dtype != torch.float16 and not torch.isfinite(stored).all():
        largest = tensor.float().abs().max().item()
        raise FtwError(
            f"{name} has values beyond float16's range (|w| up to {largest:.4g}, float16 stops at 65504): "
            "an f16 GGUF can't hold this model. Run ftw export --weights-dtype base, "
            "then ftw gguf --outtype bf16"
        )
    return stored


def _convert_rows(info: TensorInfo, name: str, dtype: str, out) -> None:
    """An untouched tensor written in another dtype, a block of rows at a time."""
    rows = info.shape[0]
    step = max(1, BLOCK_BYTES // max(info.nbytes // max(rows, 1), 1))
    for start in range(0, rows, step):
        _write_tensor(_store(read_tensor(info, slice(start, min(rows, start + step))), name, dtype), out)


def _merge_into(plan: MergePlan, name: str, target: Target, out, stored: str) -> None:
    import torch

    info = plan.base[name]
    dtype = getattr(torch, ST_DTYPES[info.dtype])
    if target.replacement:
        _write_tensor(_store(read_tensor(plan.adapter[target.replacement]).to(dtype), name, stored), out)
        return
    a = read_tensor(plan.adapter[target.a]).float()
    b = read_tensor(plan.adapter[target.b]).float()
    scale = scaling(plan, a.shape[0])
    rows, cols = info.shape
    step = max(1, BLOCK_BYTES // (4 * max(cols, 1)))
    transposed = target.embedding or plan.fan_in_fan_out
    for start in range(0, rows, step):
        block = slice(start, min(rows, start + step))
        weight = read_tensor(info, block).float()
        # (B @ A)[rows] = B[rows] @ A; for the transposed cases (B @ A).T[rows] = (B @ A[:, rows]).T
        delta = (b @ a[:, block]).T if transposed else b[block] @ a
        merged = (weight + delta * scale).to(dtype)
        if not torch.isfinite(merged).all():
            raise ValueError(f"non-finite values in merged {name}: the adapter seems broken")
        _write_tensor(_store(merged, name, stored), out)


def merge_weights(base_dir: Path, adapter_dir: Path, out_dir: Path, weights_dtype: str = "f16") -> int:
    """Write the merged shards (and index) into out_dir; return the count of merged tensors."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise FtwError(f"weights dtype {weights_dtype!r}: choose {' or '.join(WEIGHTS_DTYPES)}")
    try:
        plan = plan_merge(base_dir, adapter_dir)
    except NotStreamable as reason:
        raise SystemExit(f"cannot merge here: {reason}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in weight_files(base_dir):
        names = sorted(read_header(path), key=lambda n: plan.base[n].start)
        stored = {name: stored_dtype(plan.base[name], weights_dtype) for name in names}
        with (out_dir / path.name).open("wb") as out:
            out.write(_header_bytes(stored, plan.base))
            for name, dtype in stored.items():
                info, target = plan.base[name], plan.targets.get(name)
                if target:
                    _merge_into(plan, name, target, out, dtype)
                elif dtype != info.dtype:
                    _convert_rows(info, name, dtype, out)
                else:
                    _copy_bytes(info, out)
                total += stored_nbytes(info, dtype)
        print(f"wrote {path.name}", flush=True)
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data.setdefault("metadata", {})["total_size"] = total
        write_text_exact(out_dir / index.name, json.dumps(data, indent=2) + "\n")
    for name in CONFIG_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    merged = sum(1 for t in plan.targets.values() if not t.replacement)
    replaced = len(plan.targets) - merged
    print(
        f"streamed merge: {merged} LoRA-merged tensors, {replaced} replaced by modules_to_save, "
        f"{len(plan.base)} tensors, {total / 1e9:.2f} GB, 2-D weights stored as "
        f"{'float16' if weights_dtype == 'f16' else 'in the base dtype'}",
        flush=True,
    )
    return len(plan.targets)


def save_tokenizer(export_yaml: Path, out_dir: Path) -> None:
    """The tokenizer exactly as `llamafactory-cli export` saves it (template fixes applied)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_tokenizer

    args = yaml.safe_load(export_yaml.read_text(encoding="utf-8"))
    model_args, data_args, _, _ = get_infer_args(args)
    module = load_tokenizer(model_args)
    tokenizer = module["tokenizer"]
    get_template_and_fix_tokenizer(tokenizer, data_args)
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"
    tokenizer.save_pretrained(out_dir)
    if module.get("processor") is not None:
        module["processor"].save_pretrained(out_dir)


def main(argv: list[str]) -> None:
    if argv[:1] == ["weights"] and len(argv) in (4, 5):
        merge_weights(Path(argv[1]), Path(argv[2]), Path(argv[3]), *argv[4:])
    elif argv[:1] == ["tokenizer"] and len(argv) == 3:
        save_tokenizer(Path(argv[1]), Path(argv[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except FtwError as exc:  # the export stage shows the log's last lines: the message, not a traceback
        raise SystemExit(f"error: {exc}") from None
