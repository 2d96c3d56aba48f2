"""The stage contract: every artifact of a run is made the same way.

    declared inputs -> up to date? -> make into a partial -> verify -> rename -> record

A stage (export, gguf, modelfile, and any new one) is any object with the attributes and methods of
the `Stage` protocol: its artifact key, its target, what it is made from (`inputs`), how to make it
into a partial path (`make`) and how to check what was made (`verify`). `run_atomic(stage)` does the
rest, the same way for all of them:

- up to date: the artifact is recorded in the manifest, its target exists and its
  recorded inputs equal the current ones (like make); it is not made again;
- changed inputs: they are listed, and the artifact is made again (`--force` always
  makes it again); once it is in place, what was made from the old one is forgotten
  (wrapper/core/artifacts.py says what is made from what);
- the partial is `<target>.partial`; it and its siblings `<target>.partial*` are removed
  before making (a run killed outright leaves them) and on any failure or stop, so
  nothing half-made ever looks finished; the verified partial is renamed to the target;
- the artifact and its inputs are recorded in the manifest only after the rename.

`run_resumable(stage)` is the other runner, for training (hours of work kept in checkpoints):
its work is done in place, kept when stopped, and resumed by the next run; a change of
inputs is refused with the difference rather than starting over silently; and its inputs
are recorded when it starts, so an interrupted run remembers what it began with.

`run_steps` runs several stages where one is made from another (the GGUFs): it decides which are
current, makes an intermediate only when something made from it is being made, and removes the
intermediates nobody asked to keep once the rest is verified.

Inputs are kept as short values (a setting, 0.0002) or digests. Files up to
FULL_HASH_BYTES are hashed whole; model weights (gigabytes) by size and modification
time, which is what make trusts for every file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from wrapper.core import manifest, ui
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import replace_retrying, sha256_of, write_text_atomic
from wrapper.core.ui import done

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


def recorded_in_file(path: Path) -> dict[str, str] | None:
    """Inputs recorded beside the work they were made for (synth/inputs.json), or None."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def record_in_file(path: Path, inputs: StageInputs) -> None:
    write_text_atomic(path, json.dumps(inputs.values, ensure_ascii=False, indent=2) + "\n")


def changed_inputs_refused(what: str, changes: list[str], advice: str) -> FtwError:
    """Work under way was begun from other inputs: going on would mix the two, so it is refused."""
    listed = "\n".join(f"  - {change}" for change in changes)
    return FtwError(f"{what} with other inputs; changed since:\n{listed}\n{advice}")


def describe(changes: list[str]) -> str:
    return "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")


# ---- the contract ------------------------------------------------------------------------


class Stage(Protocol):
    """One artifact of a run, made whole: `run_atomic` builds it into a partial and renames it."""

    run_dir: Path
    key: str  # its key in wrapper/core/artifacts.py and the manifest
    target: Path
    title: str  # how messages name it: "merged model", "Q4_K_M GGUF"
    force_says: str  # what --force would do, said when it is up to date
    logs: dict[str, Path]  # artifacts recorded with it (its log), by key

    def inputs(self) -> StageInputs:
        """What the artifact is made from."""
        ...

    def make(self, partial: Path) -> None:
        """Write the artifact into `partial` (a file or a folder)."""
        ...

    def verify(self, partial: Path) -> str:
        """Raise if `partial` is not what was asked for; else return details for the closing line."""
        ...


class ResumableStage(Stage, Protocol):
    """An artifact made in place over hours (training): `run_resumable` keeps its work across stops."""

    def is_finished(self) -> bool: ...

    def has_work(self) -> bool:
        """Is there work under way (or done) that changed inputs would throw away?"""
        ...

    def refusal(self, changes: list[str]) -> FtwError:
        """The answer to changed inputs when there is work to lose."""
        ...


def is_made(stage: Stage) -> bool:
    """Finished: recorded in the manifest and still there."""
    return stage.key in manifest.load(stage.run_dir)["artifacts"] and stage.target.exists()


def check(stage: Stage, inputs: StageInputs, force: bool = False) -> list[str] | None:
    """None when the artifact is up to date; else what changed (empty when it is missing or forced)."""
    if force or not is_made(stage):
        return []
    return inputs.changes_from(recorded_inputs(stage.run_dir, inputs.key)) or None


def skip(stage: Stage) -> Path:
    """Say the artifact is up to date (recording it if an earlier run was stopped before that)."""
    if stage.key not in manifest.load(stage.run_dir)["artifacts"]:
        manifest.record_artifacts(stage.run_dir, **{stage.key: stage.target}, **stage.logs)
    removed = stage.key in manifest.removed_intermediates(stage.run_dir)
    thinned = " (its weights were removed after quantization)" if removed else ""
    done(f"{stage.title} up to date: {stage.target}{thinned} (--force {stage.force_says})")
    return stage.target


def build(stage: Stage, inputs: StageInputs, changes: list[str] | None = None) -> Path:
    """Make into the partial, verify, rename, then record (see the module docstring). What was made from
    an earlier version of the artifact is forgotten once the new one is in place."""
    remade = bool(changes) or (changes == [] and stage.key in manifest.load(stage.run_dir)["artifacts"])
    if changes:
        ui.step(f"{stage.title}: made again, changed since the last time: {describe(changes)}")
    partial = stage.target.with_name(stage.target.name + PARTIAL)
    remove_partials(partial)
    try:
        stage.make(partial)
        details = stage.verify(partial)
        replace(partial, stage.target)
    finally:
        remove_partials(partial)
    if remade:
        manifest.forget_made_from(stage.run_dir, stage.key)
    manifest.record_artifacts(stage.run_dir, **{stage.key: stage.target}, **stage.logs)
    record_inputs(stage.run_dir, inputs)
    done(f"{stage.title}{f' ({details})' if details else ''} -> {stage.target}")
    return stage.target


def run_atomic(stage: Stage, force: bool = False) -> Path:
    """The whole contract: skip what is up to date, else say what changed and build it."""
    inputs = stage.inputs()
    changes = check(stage, inputs, force)
    return skip(stage) if changes is None else build(stage, inputs, changes)


def run_resumable(stage: ResumableStage, force: bool = False) -> Path:
    """Resume the work under way, refuse changed inputs while there is work to lose, start over with --force.
    Inputs are recorded before the work starts, so a stopped run remembers what it began with."""
    if force:
        remove(stage.target)
    inputs = stage.inputs()
    changes = inputs.changes_from(recorded_inputs(stage.run_dir, inputs.key))
    if changes and (stage.is_finished() or stage.has_work()):
        raise stage.refusal(changes)
    if stage.is_finished():
        return skip(stage)
    manifest.forget_from(stage.run_dir, stage.key)
    record_inputs(stage.run_dir, inputs)
    stage.make(stage.target)
    details = stage.verify(stage.target)
    manifest.record_artifacts(stage.run_dir, **{stage.key: stage.target}, **stage.logs)
    done(f"{stage.title}{f' ({details})' if details else ''} -> {stage.target}")
    return stage.target


# ---- several artifacts, one needing another ------------------------------------------------


@dataclass
class Step:
    """A stage in a pipeline: what it is made from among the other steps, and whether it is wanted for itself
    or only as an intermediate (built when a step that needs it is built, removed by `remove` at the end)."""

    stage: Stage
    needs: tuple[Stage, ...] = ()
    wanted: bool = True
    remove: Callable[[], None] | None = None


def run_steps(steps: list[Step], force: bool = False) -> dict[str, Path]:
    """Each step in order (those it needs come before it), built only when not up to date and wanted or
    needed by a step being built; then the intermediates no step wants are removed. Returns what exists."""
    inputs = {step.stage.key: step.stage.inputs() for step in steps}
    changes = {step.stage.key: check(step.stage, inputs[step.stage.key], force) for step in steps}
    to_build: set[str] = set()
    for step in reversed(steps):
        needed_by_a_build = any(step.stage in later.needs and later.stage.key in to_build for later in steps)
        if changes[step.stage.key] is not None and (step.wanted or needed_by_a_build):
            to_build.add(step.stage.key)
    made: dict[str, Path] = {}
    for step in steps:
        key = step.stage.key
        if key in to_build:
            made[key] = build(step.stage, inputs[key], changes[key])
        elif step.wanted:
            made[key] = skip(step.stage)
    for step in steps:
        if not step.wanted and step.remove is not None:
            step.remove()
            made.pop(step.stage.key, None)
    return made


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
    replace_retrying(partial, target)
