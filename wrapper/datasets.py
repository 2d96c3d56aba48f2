"""Dataset files: read them once at render time, say what format they are, count and hash them.

LLaMA-Factory reads Alpaca and ShareGPT-style files; it learns which through
dataset_info.json. Reading every row here means a broken file is reported with its
line before training starts, not an hour into it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

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


def _records(path: Path) -> list[tuple[int, object]]:
    """(line, record) pairs of a JSON array or a JSONL file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FtwError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FtwError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        # A JSON array has no line per record; the record's index names it instead.
        return [(index + 1, record) for index, record in enumerate(data)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise FtwError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
    return records


def detect_format(record: object) -> str | None:
    if not isinstance(record, dict):
        return None
    if "instruction" in record and "output" in record:
        return "alpaca"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if isinstance(record.get("messages"), list):
        return "openai"
    return None


def inspect_dataset(path: Path) -> DatasetFile:
    if not path.is_file():
        raise FtwError(f"dataset file not found: {path}")
    if path.suffix not in (".json", ".jsonl"):
        raise FtwError(f"{path}: expected a .json or .jsonl file (Alpaca, ShareGPT or OpenAI messages)")
    records = _records(path)
    if not records:
        raise FtwError(f"{path}: the dataset has no rows")
    where = "record" if path.read_bytes().lstrip(b"\xef\xbb\xbf \r\n\t").startswith(b"[") else "line"
    first_line, first = records[0]
    fmt = detect_format(first)
    if fmt is None:
        keys = ", ".join(first) if isinstance(first, dict) else type(first).__name__
        raise FtwError(
            f"{path} {where} {first_line}: unknown row format (keys: {keys}). Expected Alpaca "
            "(instruction, input, output), ShareGPT (conversations) or OpenAI (messages)."
        )
    for number, record in records[1:]:
        if detect_format(record) != fmt:
            raise FtwError(f"{path} {where} {number}: row is not in the file's {fmt} format")
    keys = frozenset(key for _, record in records for key in record)
    return DatasetFile(path.resolve(), fmt, len(records), sha256_of(path), keys)
