"""The local Ollama store: a pulled model's GGUF blob, read without the Ollama server.

`ftw data synth --teacher ollama:NAME` reads a teacher from it, and `ftw gguf --adapter --base NAME`
checks the base an adapter is served on against the run's base.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from wrapper.core.errors import FtwError


def ollama_models_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def ollama_manifest(name: str, store: Path | None = None) -> Path:
    """Where a pulled model's manifest is: manifests/HOST/NAMESPACE/MODEL/TAG (it may not exist)."""
    store = store or ollama_models_dir()
    model, _, tag = name.partition(":")
    parts = model.split("/")
    host, namespace = "registry.ollama.ai", "library"
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    return store / "manifests" / host / namespace / model / (tag or "latest")


def ollama_blob(name: str, store: Path | None = None) -> Path:
    """The GGUF blob of a pulled Ollama model: its manifest (manifests/HOST/NAMESPACE/MODEL/TAG)
    lists layers; the one of media type ...image.model is the weights, at blobs/sha256-<hex>."""
    store = store or ollama_models_dir()
    manifest_path = ollama_manifest(name, store)
    if not manifest_path.is_file():
        raise FtwError(
            f"Ollama model {name!r} is not in the local store ({manifest_path} not found). "
            f"Pull it first: ollama pull {name}  (or set OLLAMA_MODELS to the store's folder)"
        )
    try:
        layers = json.loads(manifest_path.read_text(encoding="utf-8"))["layers"]
        digest = next(layer["digest"] for layer in layers if layer["mediaType"].endswith(".image.model"))
    except (ValueError, KeyError, StopIteration, TypeError):
        raise FtwError(f"{manifest_path}: not an Ollama model manifest with a model layer") from None
    blob = store / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise FtwError(f"{manifest_path} names {digest}, but {blob} is missing: pull it again (ollama pull {name})")
    return blob
