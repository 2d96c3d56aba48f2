"""One resumable journal for work done piece by piece (synth's chunks, eval's scored rows): a JSONL
file of entries keyed by one field, each appended whole, flushed and fsynced before the next piece
starts, so that a stop loses at most the piece under way.

A kill can cut the last line short. Opening the journal again cuts that torn tail off the file, so
the next entry starts on a line of its own and the torn piece is simply done again. A later entry
with the same key replaces an earlier one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wrapper.core.errors import FtwError


def read_entries(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """The journal's entries by `key`, after cutting off a torn last line (a line without its newline)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as handle:
            handle.truncate(len(complete))
    entries: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(complete.splitlines(), 1):
        try:
            entry = json.loads(line)
            entries[entry[key]] = entry
        except (ValueError, KeyError, TypeError):
            raise FtwError(
                f"{path}:{number}: not a journal entry (a JSON object with '{key}'). The file was changed by "
                f"something else than ftw: remove that line, or the file to start this work over."
            ) from None
    return entries


class Journal:
    """Entries by key (`entries`), and `append` for each new one."""

    def __init__(self, path: Path, key: str):
        self.path = path
        self.key = key
        self.entries = read_entries(path, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("ab")

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def append(self, entry: dict[str, Any]) -> None:
        self.handle.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.entries[entry[self.key]] = entry

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
