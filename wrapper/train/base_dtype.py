"""The base model as LLaMA-Factory loads it for a CPU run: a folder in the run whose config.json
declares the compute dtype the plan chose, beside links to the base's other files.

LLaMA-Factory 0.9.5 loads the base with torch_dtype="auto" (llamafactory/model/loader.py), so
transformers keeps the frozen weights in the dtype of the base's config.json; no training argument
of LLaMA-Factory changes that (its `infer_dtype` is for inference only). The config it reads is
therefore the one lever, and the base's own folder is never written to. The weights are linked,
not copied, where the file system allows (wrapper/core/fsutil.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from wrapper.config.compute_dtype import config_dtype, with_dtype
from wrapper.config.models import local_model_dir
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import link_or_copy, staged_dir
from wrapper.core.plan import RunPlan

CONFIG = "config.json"


def folder_for(run_dir: Path, dtype: str) -> Path:
    return run_dir / f"base-{dtype}"


def needs_folder(config: dict | None, dtype: str) -> bool:
    """An unknown config (a hub id not downloaded yet) gets the folder too: the dtype is then certain."""
    return config is None or config_dtype(config) != dtype


def is_current(folder: Path, source: Path, dtype: str) -> bool:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    names = {p.name for p in source.iterdir()}
    return config_dtype(config) == dtype and names <= {p.name for p in folder.iterdir()}


def source_dir(base_model: str) -> Path:
    """The base's folder: local, in the Hugging Face cache, or downloaded now (LLaMA-Factory would download it
    at this point anyway)."""
    found = local_model_dir(base_model)
    if found is not None:
        return found
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base_model))
    except Exception as error:  # noqa: BLE001 - no network, a gated model, a typo: say which and how
        raise FtwError(
            f"can't download {base_model} to set its compute dtype for the CPU ({type(error).__name__}: {error}). "
            f"Download it first (huggingface-cli download {base_model}), or train it in its own dtype with "
            "--set model.cpu_dtype=bfloat16"
        ) from None


def make(source: Path, folder: Path, dtype: str) -> None:
    with staged_dir(folder) as staging:
        for entry in source.iterdir():
            if entry.name == CONFIG:
                continue
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, copy_function=lambda s, t: link_or_copy(Path(s), Path(t)))
            else:
                link_or_copy(entry, staging / entry.name)
        config = json.loads((source / CONFIG).read_text(encoding="utf-8"))
        text = json.dumps(with_dtype(config, dtype), indent=2, ensure_ascii=False) + "\n"
        (staging / CONFIG).write_bytes(text.encode("utf-8"))  # `\n` on every system


def folder_in_use(plan: RunPlan) -> Path | None:
    """The folder train.yaml names as model_name_or_path when it is this run's base in its compute dtype."""
    folder = Path(plan.train_args["model_name_or_path"])
    if not plan.compute_dtype or folder != folder_for(plan.dir, plan.compute_dtype):
        return None
    return folder


def ensure(plan: RunPlan) -> Path | None:
    """The folder train.yaml names as model_name_or_path, made or brought up to date; None when the run
    loads the base as it is."""
    folder = folder_in_use(plan)
    if folder is None:
        return None
    source = source_dir(plan.base_model)
    if not is_current(folder, source, plan.compute_dtype):
        make(source, folder, plan.compute_dtype)
    return folder
