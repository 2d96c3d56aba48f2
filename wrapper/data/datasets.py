"""Dataset files as LLaMA-Factory reads them: read once at render time, their format told,
their rows counted and hashed, and their dataset_info.json entries.

LLaMA-Factory reads Alpaca and ShareGPT-style files; it learns which through
dataset_info.json. Reading every row here means a broken file is reported with its
line before training starts, not an hour into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wrapper.core.errors import FtwError
from wrapper.data.formats import detect_format, parse_row, unknown_format
from wrapper.data.readers import Problem, Progress, read_json_records

# dataset_info.json entries, per format, as LLaMA-Factory documents them (data/README.md).
FORMATS = {
    "alpaca": {
        "formatting": "alpaca",
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
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
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
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


def inspect_dataset(path: Path, field_map: dict[str, str] | None = None) -> DatasetFile:
    """Read every row of a JSON/JSONL dataset file: its format (the one detector `ftw data check`
    and `ftw data prepare` use), row count, keys and sha256; the first bad row stops with its file:line."""
    if not path.is_file():
        raise FtwError(f"dataset file not found: {path}")
    if path.suffix not in (".json", ".jsonl"):
        raise FtwError(
            f"{path}: expected a .json or .jsonl file (Alpaca, ShareGPT or OpenAI messages); "
            "raw text (.txt, .md, .srt, .vtt) and folders go through `ftw data prepare` first"
        )
    seen = Progress()
    fmt, rows, keys = None, 0, set()
    for record in read_json_records(path, seen):
        where = f"{path}:{record.line}"
        if record.problem is not None:
            raise FtwError(f"{where}: {record.problem.reason}")
        row_format = detect_format(record.value, field_map)
        if row_format is None:
            raise FtwError(f"{where}: {unknown_format(record.value).reason}")
        if row_format == "mapped":
            raise FtwError(
                f"{where}: a chat-log row, mapped by the recipe's data.field_map: make it a training set "
                "first with `ftw data prepare --recipe RECIPE --run RUN`, then render that run"
            )
        if fmt is None:
            fmt = row_format
        elif row_format != fmt:
            raise FtwError(
                f"{where}: a {row_format} row in a file of {fmt} rows; one file holds one format "
                "(`ftw data prepare` merges files of several)"
            )
        try:
            parse_row(record.value, row_format)
        except Problem as problem:
            raise FtwError(
                f"{where}: {problem.reason}. `ftw data check {path}` lists every problem; "
                "`ftw data prepare` sets such rows aside"
            ) from None
        rows += 1
        keys.update(record.value)
    if not rows:
        raise FtwError(f"{path}: the dataset has no rows")
    return DatasetFile(path.resolve(), fmt, rows, seen.sha256.hexdigest(), frozenset(keys))
