"""The stage contract: every artifact of a run is made the same way.

    declared inputs -> up to date? -> make into a partial -> verify -> rename -> record

A stage (train, export, gguf, modelfile, and any new one) subclasses `Stage`: it names
its artifact key, its target, what it is made from (`inputs`), how to make it into a
partial path (`make`) and how to check what was made (`verify`). `run(stage)` does the
rest, the same way for all of them:

- up to date: the artifact is recorded in the manifest, its target exists and its
  recorded inputs equal the current ones (like make); it is not made again;
- changed inputs: they are listed, and the artifact is made again (`--force` always
  makes it again);
- the partial is `<target>.partial`; it and its siblings `<target>.partial*` are removed
  before making (a run killed outright leaves them) and on any failure or stop, so
  nothing half-made ever looks finished; the verified partial is renamed to the target;
- the artifact and its inputs are recorded in the manifest only after the rename.

A resumable stage (training: hours of work kept in checkpoints) differs in three ways:
its work is done in place, kept when stopped, and resumed by the next run; a change of
inputs is refused with the difference rather than starting over silently; and its inputs
are recorded before it starts, so an interrupted run remembers what it began with.

Inputs are kept as short values (a setting, 0.0002) or digests. Files up to
FULL_HASH_BYTES are hashed whole; model weights (gigabytes) by size and modification
time, which is what make trusts for every file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wrapper.core import manifest
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import sha256_of
from wrapper.core.ui import console, done

FULL_HASH_BYTES = 512 * 2**20
SHORT_VALUE_CHARS = 80
STAGES = "stages"
PARTIAL = ".partial"


# ---- inputs and their records ------------------------------------------------------------


def file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > FULL_HASH_BYTES:
        return f"size {stat.st_size}, mtime {stat.st_mtime_ns}"
    return "sha256 " + sha256_of(path)[:16]


def folder_digest(folder: Path, names: tuple[str, ...] | None = None) -> str:
    """One digest of the files in `folder` (all of them, or those of `names` that exist);
    partial and hidden files are not inputs."""
    files = [folder / name for name in names] if names else sorted(folder.iterdir())
    parts = [
        f"{path.name}:{file_digest(path)}"
        for path in files
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(PARTIAL)
    ]
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

    key: str  # the artifact key in the manifest (adapter, merged, gguf_f16, gguf_q4_k_m, modelfile)
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
                changes.append(
                    f"{name}: {before if before is not None else '(not set)'} -> "
                    f"{now if now is not None else '(not set)'}"
                )
        return changes


def recorded_inputs(run_dir: Path, key: str) -> dict[str, str] | None:
    return manifest.load(run_dir).get(STAGES, {}).get(key, {}).get("inputs")


def recorded_digest(run_dir: Path, key: str) -> str | None:
    return manifest.load(run_dir).get(STAGES, {}).get(key, {}).get("digest")


def record_inputs(run_dir: Path, inputs: StageInputs) -> None:
    data = manifest.load(run_dir)
    data.setdefault(STAGES, {})[inputs.key] = {
        "inputs": inputs.values,
        "digest": inputs.digest,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.save(run_dir, data)


def describe(changes: list[str]) -> str:
    return "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")


# ---- the contract ------------------------------------------------------------------------


class Stage:
    """One artifact of a run. Subclasses set the class attributes and implement inputs, make (and verify)."""

    title = "artifact"  # how messages name it: "merged model", "Q4_K_M GGUF"
    force_says = "makes it again"  # what --force would do, said when the artifact is up to date
    resumable = False  # see the module docstring
    # Making it again makes what is made from it stale (wrapper/core/artifacts.py): those are dropped
    # from the manifest first. Only the expensive stages (train, export) need it: the others are
    # checked against their recorded inputs by whoever needs them.
    makes_others_stale = False

    def __init__(self, run_dir: Path, key: str, target: Path):
        self.run_dir = run_dir
        self.key = key
        self.target = target

    @property
    def partial(self) -> Path:
        return self.target if self.resumable else self.target.with_name(self.target.name + PARTIAL)

    def inputs(self) -> StageInputs:
        """What the artifact is made from."""
        raise NotImplementedError

    def make(self, partial: Path) -> None:
        """Write the artifact into `partial` (a file or a folder)."""
        raise NotImplementedError

    def verify(self, partial: Path) -> str:
        """Raise if `partial` is not what was asked for; else return details for the closing line."""
        return ""

    def is_made(self) -> bool:
        """Was it finished? By default: recorded in the manifest and still there."""
        return self.key in manifest.load(self.run_dir)["artifacts"] and self.target.exists()

    def has_work(self) -> bool:
        """A resumable stage: is there work under way (or done) that changed inputs would throw away?"""
        return self.target.exists()

    def also_records(self) -> dict[str, Path]:
        """Other artifacts recorded with this one (its log)."""
        return {}

    def up_to_date_note(self) -> str:
        return ""

    def changed_says(self) -> str:
        return f"{self.target.name}: changed since it was made"

    def refuse(self, changes: list[str]) -> FtwError:
        """A resumable stage's answer to changed inputs."""
        return FtwError(f"{self.target.name} was made from other inputs; changed since: {describe(changes)}")


def check(stage: Stage, inputs: StageInputs, force: bool = False) -> list[str] | None:
    """None when the artifact is up to date; else what changed (empty when it is missing or forced).
    A resumable stage with work under way and changed inputs raises instead."""
    if force:
        return []
    changes = inputs.changes_from(recorded_inputs(stage.run_dir, inputs.key))
    if stage.resumable:
        if changes and (stage.is_made() or stage.has_work()):
            raise stage.refuse(changes)
        return None if stage.is_made() else []
    if not stage.is_made():
        return []
    return changes or None


def skip(stage: Stage) -> Path:
    """Say the artifact is up to date (recording it if an earlier run was stopped before that)."""
    if stage.key not in manifest.load(stage.run_dir)["artifacts"]:
        manifest.record_artifacts(stage.run_dir, **{stage.key: stage.target}, **stage.also_records())
    done(f"{stage.title} up to date: {stage.target}{stage.up_to_date_note()} (--force {stage.force_says})")
    return stage.target


def build(stage: Stage, inputs: StageInputs, changes: list[str] | None = None) -> Path:
    """Make, verify, rename and record the artifact (see the module docstring)."""
    if changes:
        console.print(f"{stage.changed_says()}: {describe(changes)}", soft_wrap=True)
    partial = stage.partial
    if not stage.resumable:
        remove_partials(partial)
    if stage.makes_others_stale:
        manifest.forget_from(stage.run_dir, stage.key)
    if stage.resumable:
        record_inputs(stage.run_dir, inputs)
    try:
        stage.make(partial)
        details = stage.verify(partial)
        if not stage.resumable:
            replace(partial, stage.target)
    finally:
        if not stage.resumable:
            remove_partials(partial)
    manifest.record_artifacts(stage.run_dir, **{stage.key: stage.target}, **stage.also_records())
    if not stage.resumable:
        record_inputs(stage.run_dir, inputs)
    done(f"{stage.title}{f' ({details})' if details else ''} -> {stage.target}")
    return stage.target


def run(stage: Stage, force: bool = False) -> Path:
    """The whole contract: skip what is up to date, else say what changed and build it.
    A resumable stage with --force starts over: its work so far is removed."""
    if force and stage.resumable:
        remove(stage.target)
    inputs = stage.inputs()
    changes = check(stage, inputs, force)
    if changes is None:
        return skip(stage)
    return build(stage, inputs, changes)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_partials(partial: Path) -> None:
    """The partial file or folder and its helper files (`<partial>*`), from a stop or a failure."""
    if not partial.parent.is_dir():
        return
    for leftover in partial.parent.iterdir():
        if leftover.name.startswith(partial.name):
            remove(leftover)


def replace(partial: Path, target: Path) -> None:
    """Rename the verified partial to the target, replacing an older one."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    partial.replace(target)
