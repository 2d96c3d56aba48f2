"""Reading GGUF files back: is this a GGUF, what file type, how many tensors.

Every stage that meets a GGUF (made here, or given by the user by mistake as a base
model) reads it through `read_gguf`, so a bad file gets the same diagnosis everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wrapper.core.errors import FtwError

GGUF_MAGIC = b"GGUF"
# Quant types offered, by the names llama.cpp's quantize tool uses, and their average bits per
# weight (for size estimates: the disk checks, ftw plan; Llama-3.1-8B's
# Q4_K_M is 4.92 GB for 8.03 B parameters). The IQ2/IQ3 types need an importance matrix:
# llama.cpp refuses them without one (ftw gguf --imatrix).
QUANT_BITS = {
    "Q4_K_M": 4.9,
    "Q4_K_S": 4.6,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q6_K": 6.6,
    "Q8_0": 8.5,
    "Q3_K_M": 3.9,
    "Q3_K_L": 4.3,
    "Q2_K": 3.4,
    "Q4_0": 4.6,
    "IQ4_XS": 4.3,
    "IQ3_M": 3.7,
    "IQ3_XXS": 3.1,
    "IQ2_M": 2.7,
}
NEEDS_IMATRIX = frozenset({"IQ3_M", "IQ3_XXS", "IQ2_M"})
QUANT_TYPES = tuple(QUANT_BITS)
# The quantization a command uses when none is named: what Ollama's hf.co and llama.cpp's -hf take without a tag.
DEFAULT_QUANT = "Q4_K_M"


def ftype_of(kind: str) -> int:
    """llama.cpp's file type number (enum llama_ftype) for 'f16', 'bf16' or a quant name."""
    from gguf import LlamaFileType

    return int(LlamaFileType[f"MOSTLY_{kind.upper()}"])


def read_gguf(path: Path):
    """(the gguf library's reader, None) for a readable GGUF; else (None, what the file is instead, in words)."""
    from gguf import GGUFReader

    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        return None, f"can't be read ({exc.strerror})"
    if not head.startswith(GGUF_MAGIC):
        if head.startswith(b"version https://git-lfs"):
            return None, "is not a GGUF file but a Git LFS pointer (the download fetched the pointer, not the file)"
        if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
            return None, "is not a GGUF file but a web page (a download link that returned HTML)"
        return None, f"is not a GGUF file (it starts with {head[:8]!r}, a GGUF starts with {GGUF_MAGIC!r})"
    try:
        return GGUFReader(path), None
    except Exception as exc:  # the reader raises bare ValueError/struct errors on a cut-off file
        return None, f"is not a readable GGUF file, probably cut off ({path.stat().st_size} bytes; {exc})"


def gguf_problem(path: Path) -> str | None:
    """None for a file that reads as a GGUF; else what it is instead, in words."""
    return read_gguf(path)[1]


# Tensor counts of files verified in this process, by file identity. The gguf library reads every token of
# the vocabulary into its own small array: seconds for a 150k-token vocabulary (bench/README.md), and one
# `ftw gguf` verifies each file two or three times (after converting, as a stage, before removing
# intermediates). A rename keeps the identity; any write changes the size or the modification time.
_VERIFIED: dict[tuple[int, int, int, int, int], int] = {}


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) if info.st_ino else None


def verify_gguf(path: Path, expected_ftype: int) -> int:
    """Read the header back; return the tensor count. Raises if the file isn't what we asked for."""
    identity = _file_identity(path)
    key = (*identity, expected_ftype) if identity else None
    if key is not None and key in _VERIFIED:
        return _VERIFIED[key]
    reader, problem = read_gguf(path)
    if problem is not None:
        raise FtwError(f"{path} {problem}")
    if not reader.tensors:
        raise FtwError(f"{path} holds no tensors")
    file_type = field_value(reader, "general.file_type")
    if file_type != expected_ftype:
        raise FtwError(f"{path}: general.file_type is {file_type}, expected {expected_ftype}")
    if key is not None:
        _VERIFIED[key] = len(reader.tensors)
    return len(reader.tensors)


# ---- what an adapter needs of its base --------------------------------------------------


@dataclass(frozen=True)
class GgufShape:
    """What a LoRA adapter needs its base GGUF to share with the model it was trained on:
    llama.cpp's architecture, the layer count and width, and the vocabulary, token by token."""

    architecture: str | None
    file_type: str  # general.type: "model", "adapter", ...
    block_count: int | None
    embedding_length: int | None
    tokens: tuple[bytes, ...]
    tensors: int

    @classmethod
    def read(cls, path: Path) -> GgufShape:
        reader, problem = read_gguf(path)
        if problem is not None:
            raise FtwError(f"{path} {problem}")
        arch = field_value(reader, "general.architecture")
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        return cls(
            architecture=arch,
            file_type=field_value(reader, "general.type") or "model",
            block_count=field_value(reader, f"{arch}.block_count"),
            embedding_length=field_value(reader, f"{arch}.embedding_length"),
            tokens=tuple(bytes(tokens.parts[index]) for index in tokens.data) if tokens else (),
            tensors=len(reader.tensors),
        )

    def differences(self, other: GgufShape) -> list[str]:
        """How `other` differs from this one, one phrase each (this one's value first)."""
        found = [
            f"{name} {mine} vs {theirs}"
            for name, mine, theirs in (
                ("architecture", self.architecture, other.architecture),
                ("layers", self.block_count, other.block_count),
                ("width (embedding length)", self.embedding_length, other.embedding_length),
            )
            if mine != theirs
        ]
        if len(self.tokens) != len(other.tokens):
            found.append(f"vocabulary {len(self.tokens)} tokens vs {len(other.tokens)}")
        elif self.tokens != other.tokens:
            differ = [i for i, (mine, theirs) in enumerate(zip(self.tokens, other.tokens)) if mine != theirs]
            first = differ[0]
            mine, theirs = (tokens[first].decode("utf-8", "replace") for tokens in (self.tokens, other.tokens))
            found.append(
                f"vocabulary: {len(differ)} of {len(self.tokens)} tokens differ (id {first}: {mine!r} vs {theirs!r})"
            )
        return found


def field_value(reader, key: str):
    """A scalar or string field of a GGUF header, or None."""
    field = reader.fields.get(key)
    return field.contents() if field is not None else None
