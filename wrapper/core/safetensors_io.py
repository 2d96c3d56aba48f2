"""Reading safetensors files without loading them: headers, and tensors by positioned reads.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data offsets), then the raw bytes. Reading the header alone tells a model's size and
parameter count; reading a tensor's rows alone keeps a merge's memory bounded.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from wrapper.core.errors import FtwError

ST_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
ST_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}


@dataclass
class TensorInfo:
    file: Path
    dtype: str
    shape: list[int]
    start: int  # absolute offset in file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of a safetensors file, checked against the file's size: a file cut short
    (an interrupted copy or download, a full disk) would otherwise read as zeros."""
    size = path.stat().st_size
    damaged = (
        f"{path} is damaged or truncated ({size} bytes); make it again (an adapter: "
        "ftw train --force; a base model: download or copy it again)"
    )
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise FtwError(damaged)
        (length,) = struct.unpack("<Q", prefix)
        if 8 + length > size:
            raise FtwError(damaged)
        try:
            header = json.loads(handle.read(length))
        except ValueError as exc:
            raise FtwError(f"{damaged}: its header is not JSON ({exc})") from None
    base = 8 + length
    tensors = {
        name: TensorInfo(
            path, meta["dtype"], meta["shape"], base + meta["data_offsets"][0], base + meta["data_offsets"][1]
        )
        for name, meta in header.items()
        if name != "__metadata__"
    }
    needed = max((info.end for info in tensors.values()), default=base)
    if needed > size:
        raise FtwError(f"{damaged}: its header describes {needed} bytes")
    return tensors


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model folder (sharded, per its index, or a single file)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / name for name in names]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else []


def model_weights(model_dir: Path) -> tuple[int, int]:
    """(bytes, parameters) of a safetensors model folder, from its headers."""
    size = params = 0
    for path in weight_files(model_dir):
        for info in read_header(path).values():
            size += info.nbytes
            params += math.prod(info.shape)
    return size, params


def read_tensor(info: TensorInfo, rows: slice | None = None):
    """The tensor (or a block of its rows) as a torch tensor, read with positioned reads."""
    import torch

    dtype = getattr(torch, ST_DTYPES[info.dtype])
    shape = list(info.shape)
    start, end = info.start, info.end
    if rows is not None:
        row_bytes = info.nbytes // max(shape[0], 1)
        start, end = info.start + rows.start * row_bytes, info.start + rows.stop * row_bytes
        shape[0] = rows.stop - rows.start
    buffer = bytearray(end - start)
    with info.file.open("rb") as handle:
        handle.seek(start)
        if handle.readinto(buffer) != len(buffer):
            raise FtwError(
                f"{info.file} ended early while reading a tensor: it was changed or cut short during the merge"
            )
    if not buffer:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).reshape(shape)
