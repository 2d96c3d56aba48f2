"""Loading recipes: find the file, read it with its line numbers, apply --set, check it
against the schema (wrapper/config/schema.py)."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from wrapper.config.schema import Recipe, keys_of, parse
from wrapper.config.yamldoc import Origin, YamlDoc, find_named, load_yaml, parse_yaml
from wrapper.core.errors import FtwError
from wrapper.core.paths import RECIPES_DIR

# Beside the recipes but not one: config.json of the shipped recipes' models (wrapper/config/models.py).
MODEL_CONFIGS = "models.yaml"


def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml") if path.name != MODEL_CONFIGS)


def load_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> Recipe:
    """A shipped recipe by name, or a recipe file by path, with `--set` overrides applied."""
    path = find_named(name_or_path, RECIPES_DIR, "recipe")
    doc = load_yaml(path)
    doc.overrides = apply_overrides(doc.data, list(overrides))
    return parse_recipe(doc, path.stem)


def parse_recipe(doc: YamlDoc, name: str) -> Recipe:
    recipe = parse(Recipe, doc.data, doc)
    recipe.name, recipe.doc = name, doc
    return recipe


def apply_overrides(recipe_data: dict, overrides: list[str]) -> dict[str, Origin]:
    """Apply --set key=value to the recipe's data; return the origin of each changed key.

    A key naming a recipe section (`system=...`, `model.template=...`) sets it; any other
    bare key is a LLaMA-Factory training key (`learning_rate=5e-5` means `train.learning_rate`).
    Values are parsed as YAML scalars so numbers and booleans keep their types.
    """
    sections = keys_of(Recipe)
    origins: dict[str, Origin] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FtwError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=5e-5")
        top = key.split(".", 1)[0]
        dotted = key if top in sections else f"train.{key}"
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise FtwError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
        target = recipe_data
        parts = dotted.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise FtwError(f"--set {item!r}: '{part}' is not a section")
        target[parts[-1]] = value
        origins[dotted] = Origin("--set", dotted)
    return origins
