"""runs/RUN/manifest.json: what a run was made from and where each artifact is.

Artifacts are recorded under stable keys (adapter, merged, gguf_f16, gguf_q4_k_m,
modelfile, train_log, ...) only after the stage that makes them succeeded, so a key in
the manifest means a finished file.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from wrapper.core import artifacts
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.gguf_io import QUANT_TYPES
from wrapper.core.paths import llama_cpp_commit, runs_dir
from wrapper.core.plan import RunPlan

MANIFEST = "manifest.json"
VERSIONED_PACKAGES = ("llamafactory", "transformers", "torch", "peft", "llama_cpp_python", "gguf")


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """The versions a run is made with: the packages that train, convert and quantize, and llama.cpp's commit."""
    found = {package: package_version(package) for package in VERSIONED_PACKAGES}
    found["llama.cpp"] = llama_cpp_commit()
    return found


def run_dir_of(run: str) -> Path:
    """The folder of an existing run, or a message saying how to make it."""
    path = runs_dir() / run
    if not (path / MANIFEST).is_file():
        raise FtwError(
            f"no run '{run}' under {runs_dir()}. Render it first: ftw render --recipe R --profile P --run {run}"
        )
    return path


def load(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise FtwError(
            f"no run at {run_dir} (no {MANIFEST}). "
            f"Render it first: ftw render --recipe R --profile P --run {run_dir.name}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def save(run_dir: Path, data: dict[str, Any]) -> None:
    write_text_atomic(run_dir / MANIFEST, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def start(plan: RunPlan) -> None:
    """A new render keeps what earlier stages made and were made from: training resumes, and each
    later stage redoes itself only if its inputs changed (wrapper/core/stage.py)."""
    path = plan.dir / MANIFEST
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    kept = {key: previous[key] for key in (REMOVED, END_TOKENS, "stages") if key in previous}
    save(
        plan.dir,
        {
            "run": plan.run,
            "recipe": plan.recipe,
            "profile": plan.profile,
            "rendered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "plan": asdict(plan),
            "datasets": plan.datasets,
            "versions": versions(),
            "artifacts": previous.get("artifacts", {}),
            **kept,
        },
    )


def record_artifacts(run_dir: Path, **paths: Path) -> None:
    data = load(run_dir)
    for key, path in paths.items():
        data["artifacts"][key] = str(path)
        data.get(REMOVED, {}).pop(key, None)  # made again: no longer a removed intermediate
    data["versions"] = versions()
    save(run_dir, data)


def drop_artifact(run_dir: Path, key: str) -> None:
    data = load(run_dir)
    if data["artifacts"].pop(key, None) is not None:
        save(run_dir, data)


# Intermediates `ftw gguf` removed once the quantized files were verified: key -> what was freed.
REMOVED = "removed_intermediates"


def removed_intermediates(run_dir: Path) -> dict[str, Any]:
    return load(run_dir).get(REMOVED, {})


def record_removed(run_dir: Path, key: str, what: dict[str, Any]) -> None:
    """Note that artifact `key` was removed as an intermediate; a removed file is no longer an artifact."""
    data = load(run_dir)
    data.setdefault(REMOVED, {})[key] = what
    if key != artifacts.MERGED:  # the merged folder stays: its tokenizer and config serve the later stages
        data["artifacts"].pop(key, None)
    save(run_dir, data)


# Per artifact, the tokens that end an answer there and why each is one (wrapper/prompts/end_tokens.py).
END_TOKENS = "end_tokens"


def record_end_tokens(run_dir: Path, key: str, entries: list[dict[str, Any]]) -> None:
    data = load(run_dir)
    data.setdefault(END_TOKENS, {})[key] = entries
    save(run_dir, data)


def forget_from(run_dir: Path, made_again: str) -> None:
    """Drop `made_again` and every artifact made from it from the manifest (their inputs are changing);
    what is made from what is declared in wrapper/core/artifacts.py."""
    data = load(run_dir)
    data["artifacts"] = {
        key: value for key, value in data["artifacts"].items() if not artifacts.depends_on(key, made_again)
    }
    if artifacts.depends_on(artifacts.MERGED, made_again):  # a new merge brings the removed intermediates back
        data.pop(REMOVED, None)
    save(run_dir, data)


def forget_made_from(run_dir: Path, made_again: str) -> None:
    """Drop every artifact made from `made_again` (which was just made anew from other inputs), not itself."""
    data = load(run_dir)
    kept = data["artifacts"].get(made_again)
    forget_from(run_dir, made_again)
    if kept is not None:
        data = load(run_dir)
        data["artifacts"][made_again] = kept
        save(run_dir, data)


def artifact(run_dir: Path, key: str) -> Path:
    """The path of a finished artifact, or a message naming the command that makes it."""
    value = load(run_dir)["artifacts"].get(key)
    if not value or not Path(value).exists():
        made_by = artifacts.declared(key).command_for(run_dir.name)
        raise FtwError(f"run {run_dir.name} has no {artifacts.declared(key).title} yet. Run `{made_by}` first.")
    return Path(value)


def quantized_ggufs(run_dir: Path) -> dict[str, Path]:
    """The run's quantized GGUFs whose files are here, by quant name, in QUANT_TYPES' order (the default first)."""
    recorded = load(run_dir)["artifacts"]
    found = {quant: recorded.get(artifacts.gguf(quant)) for quant in QUANT_TYPES}
    return {quant: Path(value) for quant, value in found.items() if value and Path(value).is_file()}


def plan_of(run_dir: Path) -> RunPlan:
    return RunPlan.from_dict(load(run_dir)["plan"])
