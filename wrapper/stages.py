"""Up-to-date stages: what each artifact was made from, kept in the manifest under `stages`.

A stage whose recorded inputs equal the current ones is skipped (like make); one whose
inputs changed is redone, saying what changed; `--force` redoes it regardless. Training
is the exception: it takes hours, so a changed recipe or dataset stops it with the
difference instead of silently starting over (wrapper/train.py).

Inputs are kept as short values (a setting, 0.0002) or digests. Files up to
FULL_HASH_BYTES are hashed whole; model weights (gigabytes) by name, size and
modification time, which is what make trusts for every file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FULL_HASH_BYTES = 512 * 2**20
SHORT_VALUE_CHARS = 80
STAGES = "stages"


def file_digest(path: Path) -> str:
    from wrapper.datasets import sha256_of

    stat = path.stat()
    if stat.st_size > FULL_HASH_BYTES:
        return f"size {stat.st_size}, mtime {stat.st_mtime_ns}"
    return "sha256 " + sha256_of(path)[:16]


def folder_digest(folder: Path, names: tuple[str, ...] | None = None) -> str:
    """One digest of the files in `folder` (all of them, or those of `names` that exist); partial and hidden files are not inputs."""
    files = [folder / name for name in names] if names else sorted(folder.iterdir())
    parts = [f"{path.name}:{file_digest(path)}" for path in files
             if path.is_file() and not path.name.startswith(".") and not path.name.endswith(".partial")]
    return value_digest(parts)


def value_digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256 " + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def short_value(value: Any) -> str:
    """A setting as it reads in a diff, or its digest when too long to show."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= SHORT_VALUE_CHARS else value_digest(value)


@dataclass
class StageInputs:
    """What one artifact is made from: input name -> short value or digest."""

    key: str  # the artifact key in the manifest (adapter, merged, gguf_f16, gguf_q4_k_m)
    values: dict[str, str]

    @property
    def digest(self) -> str:
        return value_digest(self.values)

    def changes_from(self, recorded: dict[str, str] | None) -> list[str] | None:
        """What differs from `recorded`, one line per input; None when nothing was recorded (an older run)."""
        if recorded is None:
            return None
        changes = []
        for name in sorted(set(recorded) | set(self.values)):
            before, now = recorded.get(name), self.values.get(name)
            if before != now:
                changes.append(f"{name}: {before if before is not None else '(not set)'} -> "
                               f"{now if now is not None else '(not set)'}")
        return changes


def recorded_inputs(run_dir: Path, key: str) -> dict[str, str] | None:
    from wrapper import manifest

    return manifest.load(run_dir).get(STAGES, {}).get(key, {}).get("inputs")


def record_inputs(run_dir: Path, inputs: StageInputs) -> None:
    from wrapper import manifest

    data = manifest.load(run_dir)
    data.setdefault(STAGES, {})[inputs.key] = {
        "inputs": inputs.values,
        "digest": inputs.digest,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.save(run_dir, data)


def recorded_digest(run_dir: Path, key: str) -> str | None:
    from wrapper import manifest

    return manifest.load(run_dir).get(STAGES, {}).get(key, {}).get("digest")


def describe(changes: list[str]) -> str:
    return "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
