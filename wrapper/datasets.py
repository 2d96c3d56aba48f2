"""Dataset files: read them once at render time, say what format they are, count and hash them.

LLaMA-Factory reads Alpaca and ShareGPT-style files; it learns which through
dataset_info.json. Reading every row here means a broken file is reported with its
line before training starts, not an hour into it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wrapper.data_formats import Progress, read_json_records
from wrapper.errors import FtwError

# dataset_info.json entries, per format, as LLaMA-Factory documents them (data/README.md).
FORMATS = {
    "alpaca": {
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output",
                    "system": "system", "history": "history"},
    },
    "sharegpt": {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
    },
    # raw text for continued pretraining (stage: pt): {"text": ...} rows
    "text": {
        "formatting": "alpaca",
        "columns": {"prompt": "text"},
    },
    "openai": {
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"},
    },
}


@dataclass(frozen=True)
class DatasetFile:
    path: Path
    format: str
    rows: int
    sha256: str
    keys: frozenset[str]  # every top-level key seen in the file's rows

    def dataset_info_entry(self) -> dict:
        entry = {"file_name": str(self.path), **FORMATS[self.format]}
        # LLaMA-Factory fails on a mapped column the file doesn't have (KeyError: 'history').
        entry["columns"] = {role: column for role, column in entry["columns"].items() if column in self.keys}
        return entry


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _records(path: Path, seen: Progress | None = None) -> Iterator[tuple[int, object]]:
    """(line, record) pairs of a JSON array or a JSONL file, streamed (wrapper/data_formats.py);
    the first unreadable row stops with its file:line."""
    for record in read_json_records(path, seen):
        if record.problem is not None:
            raise FtwError(f"{path}:{record.line}: {record.problem.reason}")
        yield record.line, record.value


def detect_format(record: object) -> str | None:
    if not isinstance(record, dict):
        return None
    if "instruction" in record and "output" in record:
        return "alpaca"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if isinstance(record.get("messages"), list):
        return "openai"
    if isinstance(record.get("text"), str):
        return "text"
    return None


def inspect_dataset(path: Path) -> DatasetFile:
    if not path.is_file():
        raise FtwError(f"dataset file not found: {path}")
    if path.suffix not in (".json", ".jsonl"):
        raise FtwError(f"{path}: expected a .json or .jsonl file (Alpaca, ShareGPT or OpenAI messages); "
                       "raw text (.txt, .md, .srt, .vtt) and folders go through `ftw data prepare` first")
    seen = Progress()
    fmt, rows, keys = None, 0, set()
    for number, record in _records(path, seen):
        if fmt is None:
            fmt = detect_format(record)
            if fmt is None:
                found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise FtwError(
                    f"{path} line {number}: unknown row format (keys: {found}). Expected Alpaca "
                    "(instruction, input, output), ShareGPT (conversations) or OpenAI (messages)."
                )
        elif detect_format(record) != fmt:
            raise FtwError(f"{path} line {number}: row is not in the file's {fmt} format")
        rows += 1
        keys.update(record)
    if not rows:
        raise FtwError(f"{path}: the dataset has no rows")
    return DatasetFile(path.resolve(), fmt, rows, seen.sha256.hexdigest(), frozenset(keys))
