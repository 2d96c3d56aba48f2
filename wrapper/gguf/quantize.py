"""Quantize a GGUF with the llama.cpp inside llama-cpp-python (no separate binary to build).

Run as a child process by the GGUF stage (`python -m wrapper.gguf.quantize SRC DST FTYPE
[MAX_BUF_BYTES]`), so llama.cpp's own output lands in the stage's log and Ctrl-C stops it.
MAX_BUF_BYTES 0 is llama.cpp's default (bench/export_memory.py uses it for the plain path).
"""

from __future__ import annotations

import sys

# Rows of one tensor the quantizer holds at once (read, as float32, and quantized). llama.cpp's
# default is 8 GiB, i.e. a whole tensor: for Qwen3-8B's 151,936 x 4096 token embedding that is
# 2.5 GB of float32. In slabs of this size the quantizer's memory no longer grows with the vocabulary.
MAX_BUF_BYTES = 256 * 2**20


def quantize(source: str, target: str, ftype: int, max_buf_bytes: int = MAX_BUF_BYTES) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.max_buf_size = max_buf_bytes
    status = llama_cpp.llama_model_quantize(source.encode(), target.encode(), params)
    if status != 0:
        raise SystemExit(f"llama_model_quantize returned {status}")


if __name__ == "__main__":
    quantize(sys.argv[1], sys.argv[2], int(sys.argv[3]), *(int(arg) for arg in sys.argv[4:5]))
