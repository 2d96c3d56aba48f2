"""Free-disk checks before a stage writes gigabytes: stop with the numbers rather than fill the disk."""

from __future__ import annotations

import shutil
from pathlib import Path

from wrapper.core.errors import FtwError

MARGIN = 1.05  # headers, tokenizer files, estimate slack


def check_free_space(where: Path, needs: dict[str, int], what: str) -> None:
    """Stop when `needs` (what will be written: name -> bytes) doesn't fit the free disk under `where`."""
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    total = sum(needs.values())
    if free < total * MARGIN:
        parts = ", ".join(f"{name} {size / 1e9:.1f} GB" for name, size in needs.items())
        raise FtwError(
            f"not enough free disk for {what}: it will write about {total * MARGIN / 1e9:.1f} GB "
            f"({parts}, +{(MARGIN - 1) * 100:.0f}%) under {where}, and {free / 1e9:.1f} GB is free. "
            f"Free {(total * MARGIN - free) / 1e9:.1f} GB or move the runs folder (FTW_RUNS_DIR)."
        )


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0
