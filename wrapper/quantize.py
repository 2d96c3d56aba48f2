"""Quantize a GGUF with the llama.cpp inside llama-cpp-python (no separate binary to build).

Run as a child process by the GGUF stage (`python -m wrapper.quantize SRC DST FTYPE`),
so llama.cpp's own output lands in the stage's log and Ctrl-C stops it.
"""

from __future__ import annotations

import sys


def quantize(source: str, target: str, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    status = llama_cpp.llama_model_quantize(source.encode(), target.encode(), params)
    if status != 0:
        raise SystemExit(f"llama_model_quantize returned {status}")


if __name__ == "__main__":
    quantize(sys.argv[1], sys.argv[2], int(sys.argv[3]))
