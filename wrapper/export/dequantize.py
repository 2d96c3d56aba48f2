"""Make a full-precision copy of a pre-quantized bitsandbytes checkpoint.

Run as a child process by the export stage (`python -m wrapper.export.dequantize SRC DST`) so
its memory is returned when it ends and its output goes to the export log.
"""

from __future__ import annotations

import sys
from pathlib import Path

from wrapper.core.fsutil import staged_dir


def dequantize(source: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, device_map="cpu")
    quant_config = getattr(model.config, "quantization_config", None)
    compute_dtype = getattr(quant_config, "bnb_4bit_compute_dtype", None)
    if isinstance(quant_config, dict):
        compute_dtype = quant_config.get("bnb_4bit_compute_dtype")
    dtype = getattr(torch, str(compute_dtype).removeprefix("torch."), None) if compute_dtype else None
    if not isinstance(dtype, torch.dtype) or dtype == torch.float32:
        dtype = torch.bfloat16
    model = model.dequantize()
    # transformers 5 keeps the load-time weight conversions to redo them in reverse on save;
    # bitsandbytes' deserializer has no reverse (save_pretrained raises a bare
    # NotImplementedError), and after dequantize() the weights are plain tensors anyway.
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [
            c
            for c in conversions
            if not any(type(op).__module__.endswith(".bitsandbytes") for op in getattr(c, "operations", ()))
        ]
    model = model.to(dtype)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = dtype

    with staged_dir(target) as staging:
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(source).save_pretrained(staging)
    print(f"dequantized {source} -> {target} ({dtype})")


if __name__ == "__main__":
    dequantize(sys.argv[1], Path(sys.argv[2]))
