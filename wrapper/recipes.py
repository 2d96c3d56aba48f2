"""Recipes and profiles: load, check their shape, and remember where every value came from.

A recipe says what to train (base model, chat template, data, method, hyperparameters,
serving settings, check prompts); a profile says what hardware it runs on. Both are YAML.
Every value keeps its origin (file, line, key) so that a later error, even one raised by
LLaMA-Factory, can point at the line to edit.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wrapper.errors import FtwError
from wrapper.paths import PROFILES_DIR, RECIPES_DIR

METHODS = ("lora", "qlora", "full")
RECIPE_KEYS = {
    "description": str, "model": dict, "method": str, "dataset": list, "system": str,
    "train": dict, "export": dict, "ollama": dict, "checks": list, "data": dict, "eval": dict,
}
MODEL_KEYS = {"base": str, "template": str, "full_precision_base": str}
# `ftw data prepare`: how the user's files become the training set (see DataSettings).
DATA_KEYS = {"val_ratio": (int, float), "seed": int, "dedupe": str, "min_rating": (int, float),
             "field_map": dict, "chunk_overlap": int}
FIELD_MAP_KEYS = {"instruction": str, "input": str, "output": str, "system": str, "rating": str, "lang": str}
DEDUPE_MODES = ("exact", "near", "none")
OLLAMA_KEYS = {"parameters": dict}
# `ftw eval`: control prompts and general-knowledge prompts (JSONL, relative to the recipe), val sample size
EVAL_KEYS = {"control": str, "general": str, "val_sample": int, "seed": int, "max_new_tokens": int}
PROFILE_KEYS = {"description": str, "device": str, "memory_gb": (int, float), "train": dict, "aliases": list, "gpu": dict}
GPU_KEYS = {"compute_capability": (int, float), "bf16": bool, "peak_bf16_tflops": (int, float)}
MULTI_GPU = re.compile(r"(?P<base>.+)x(?P<count>[0-9]+)")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Origin:
    """Where a value was set: a file and line, or a command-line flag."""

    source: str
    key: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where} (key '{self.key}')"


@dataclass
class YamlDoc:
    path: Path
    data: dict[str, Any]
    lines: dict[str, int]  # dotted key path -> 1-based line number
    overrides: dict[str, Origin] = field(default_factory=dict)  # keys set by --set

    def origin(self, key: str) -> Origin:
        if key in self.overrides:
            return self.overrides[key]
        return Origin(display_path(self.path), key, self.lines.get(key))


@dataclass
class Check:
    prompt: str
    expect: str


@dataclass
class DataSettings:
    """The recipe's `data:` section: split, duplicates, chat-log mapping, text chunking."""

    val_ratio: float = 0.1        # share of rows held out for validation, per language
    seed: int = 42                # seed of the split
    dedupe: str = "exact"         # exact | near (same after case/whitespace folding) | none
    min_rating: float | None = None           # drop chat-log rows rated below this
    field_map: dict[str, str] = field(default_factory=dict)  # chat-log column -> alpaca role
    chunk_overlap: int = 0        # raw text: tokens shared by consecutive chunks


@dataclass
class Recipe:
    name: str
    doc: YamlDoc
    base_model: str
    template: str
    method: str
    datasets: list[str]
    full_precision_base: str | None = None
    system: str | None = None
    description: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    ollama_parameters: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    data: DataSettings = field(default_factory=DataSettings)
    eval: dict[str, Any] = field(default_factory=dict)  # the `eval:` section, checked against EVAL_KEYS

    @property
    def folder(self) -> Path:
        return self.doc.path.parent


@dataclass
class Profile:
    name: str
    doc: YamlDoc
    device: str
    memory_gb: float  # per GPU
    description: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    gpus: int = 1
    compute_capability: float = 0.0
    bf16: bool = True
    peak_bf16_tflops: float = 0.0

    @property
    def base_name(self) -> str:
        return self.name.rsplit("x", 1)[0] if self.gpus > 1 else self.name


class RecipeLoader(yaml.SafeLoader):
    """PyYAML reads `5e-5` as a string (YAML 1.1); LLaMA-Factory's OmegaConf reads it as a float. So do we."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _record_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key + ".", lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = f"{prefix.rstrip('.')}[{index}]"
            lines[key] = item.start_mark.line + 1
            _record_lines(item, key + ".", lines)


def load_yaml(path: Path) -> YamlDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FtwError(f"{display_path(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = parse_yaml(text)
        node = yaml.compose(text, Loader=RecipeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{display_path(path)}:{mark.line + 1}:{mark.column + 1}" if mark else display_path(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise FtwError(f"{where}: YAML syntax error: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FtwError(f"{display_path(path)}: expected a mapping of keys at the top, found {type(data).__name__}")
    lines: dict[str, int] = {}
    if node is not None:
        _record_lines(node, "", lines)
    return YamlDoc(path, data, lines)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _check_keys(doc: YamlDoc, mapping: dict, schema: dict, prefix: str = "") -> None:
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise FtwError(
                f"{doc.origin(dotted)}: unknown key.{_did_you_mean(str(key), schema)} "
                f"Known keys here: {', '.join(sorted(schema))}."
            )
        expected = schema[key]
        if value is not None and not isinstance(value, expected):
            names = " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__
            raise FtwError(f"{doc.origin(dotted)}: expected {names}, found {type(value).__name__} {value!r}")


def _require(doc: YamlDoc, mapping: dict, key: str, dotted: str) -> Any:
    value = mapping.get(key)
    if value in (None, "", []):
        raise FtwError(f"{doc.origin(dotted.rsplit('.', 1)[0] if '.' in dotted else dotted)}: "
                       f"'{dotted}' is required in {display_path(doc.path)}")
    return value


def find_named(name_or_path: str, folder: Path, kind: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if candidate.is_file():
            return candidate.resolve()
        raise FtwError(f"{kind} file not found: {name_or_path}")
    path = folder / f"{name_or_path}.yaml"
    if path.is_file():
        return path
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    raise FtwError(
        f"unknown {kind} '{name_or_path}'.{_did_you_mean(name_or_path, known)} "
        f"Known {kind}s: {', '.join(known)} (in {display_path(folder)}), or give a path to a .yaml file."
    )


def parse_recipe(doc: YamlDoc, name: str) -> Recipe:
    data = doc.data
    _check_keys(doc, data, RECIPE_KEYS)
    model = _require(doc, data, "model", "model")
    _check_keys(doc, model, MODEL_KEYS, "model.")
    method = data.get("method", "lora")
    if method not in METHODS:
        raise FtwError(f"{doc.origin('method')}: method must be one of {', '.join(METHODS)}, found {method!r}")
    datasets = _require(doc, data, "dataset", "dataset")
    for index, entry in enumerate(datasets):
        if not isinstance(entry, str):
            raise FtwError(f"{doc.origin(f'dataset[{index}]')}: a dataset entry is a file path, found {entry!r}")
    ollama = data.get("ollama") or {}
    _check_keys(doc, ollama, OLLAMA_KEYS, "ollama.")
    from wrapper.modelfile import check_parameters  # Ollama's parameter names and types, checked before training

    check_parameters(ollama.get("parameters") or {}, lambda key: doc.origin(f"ollama.parameters.{key}"))
    checks = []
    for index, item in enumerate(data.get("checks") or []):
        if not (isinstance(item, dict) and isinstance(item.get("prompt"), str) and isinstance(item.get("expect"), str)):
            raise FtwError(f"{doc.origin(f'checks[{index}]')}: each check needs 'prompt' and 'expect' strings")
        checks.append(Check(item["prompt"], item["expect"]))
    data_settings = _parse_data(doc, data.get("data") or {})
    eval_settings = data.get("eval") or {}
    _check_keys(doc, eval_settings, EVAL_KEYS, "eval.")
    return Recipe(
        name=name,
        doc=doc,
        base_model=_require(doc, model, "base", "model.base"),
        template=_require(doc, model, "template", "model.template"),
        full_precision_base=model.get("full_precision_base"),
        method=method,
        datasets=list(datasets),
        system=data.get("system"),
        description=data.get("description") or "",
        train=dict(data.get("train") or {}),
        export=dict(data.get("export") or {}),
        ollama_parameters=dict(ollama.get("parameters") or {}),
        checks=checks,
        data=data_settings,
        eval=dict(eval_settings),
    )


def _parse_data(doc: YamlDoc, section: dict) -> DataSettings:
    _check_keys(doc, section, DATA_KEYS, "data.")
    field_map = section.get("field_map") or {}
    _check_keys(doc, field_map, FIELD_MAP_KEYS, "data.field_map.")
    settings = DataSettings(**{key: value for key, value in section.items() if value is not None})
    settings.field_map = dict(field_map)
    if not 0 <= settings.val_ratio < 1:
        raise FtwError(f"{doc.origin('data.val_ratio')}: val_ratio is a share of the rows, 0 <= val_ratio < 1; "
                       f"found {settings.val_ratio!r}")
    if settings.dedupe not in DEDUPE_MODES:
        raise FtwError(f"{doc.origin('data.dedupe')}: dedupe must be one of {', '.join(DEDUPE_MODES)}, "
                       f"found {settings.dedupe!r}")
    if settings.chunk_overlap < 0:
        raise FtwError(f"{doc.origin('data.chunk_overlap')}: chunk_overlap is a number of tokens >= 0")
    if field_map and not (field_map.get("instruction") and field_map.get("output")):
        raise FtwError(f"{doc.origin('data.field_map')}: field_map needs at least 'instruction' and 'output' "
                       "(the columns holding the user's message and the answer)")
    if settings.min_rating is not None and not field_map.get("rating"):
        raise FtwError(f"{doc.origin('data.min_rating')}: min_rating needs field_map.rating "
                       "(the column holding each row's rating)")
    return settings


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    path = find_named(name_or_path, RECIPES_DIR, "recipe")
    doc = load_yaml(path)
    doc.overrides = apply_overrides(doc.data, list(overrides))
    return parse_recipe(doc, path.stem)


def profile_aliases() -> dict[str, str]:
    """alias -> profile name, from each profile's `aliases:`."""
    found = {}
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        for alias in (parse_yaml(path.read_text(encoding="utf-8")) or {}).get("aliases") or []:
            found[str(alias)] = path.stem
    return found


def load_profile(name_or_path: str) -> Profile:
    """A profile by name, alias or path; NAMExN (e.g. a100-40x8) is N GPUs of profile NAME."""
    aliases = profile_aliases()

    def known(candidate: str) -> bool:
        return candidate in aliases or (PROFILES_DIR / f"{candidate}.yaml").is_file()

    gpus, name = 1, name_or_path
    multi = MULTI_GPU.fullmatch(name_or_path)
    if multi and not known(name_or_path) and known(multi["base"]):
        name, gpus = multi["base"], int(multi["count"])
        if gpus < 1:
            raise FtwError(f"profile {name_or_path!r}: the GPU count after 'x' must be at least 1")
    name = aliases.get(name, name)
    path = find_named(name, PROFILES_DIR, "profile")
    doc = load_yaml(path)
    _check_keys(doc, doc.data, PROFILE_KEYS)
    gpu = doc.data.get("gpu") or {}
    _check_keys(doc, gpu, GPU_KEYS, "gpu.")
    device = doc.data.get("device", "cuda")
    if device not in DEVICES:
        raise FtwError(f"{doc.origin('device')}: device must be one of {', '.join(DEVICES)}, found {device!r}")
    if gpus > 1 and device != "cuda":
        raise FtwError(f"profile {name_or_path!r}: several GPUs need a cuda profile, {path.stem} is {device}")
    return Profile(
        name=path.stem if gpus == 1 else f"{path.stem}x{gpus}",
        doc=doc,
        device=device,
        memory_gb=float(doc.data.get("memory_gb") or 0),
        description=doc.data.get("description") or "",
        train=dict(doc.data.get("train") or {}),
        gpus=gpus,
        compute_capability=float(gpu.get("compute_capability") or 0),
        bf16=bool(gpu.get("bf16", True)),
        peak_bf16_tflops=float(gpu.get("peak_bf16_tflops") or 0),
    )


def apply_overrides(recipe_data: dict, overrides: list[str]) -> dict[str, Origin]:
    """Apply --set key=value to the recipe's data; return the origin of each changed key.

    A key naming a recipe section (`system=...`, `model.template=...`) sets it; any other
    bare key is a LLaMA-Factory training key (`learning_rate=5e-5` means `train.learning_rate`).
    Values are parsed as YAML scalars so numbers and booleans keep their types.
    """
    origins: dict[str, Origin] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FtwError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=5e-5")
        top = key.split(".", 1)[0]
        dotted = key if top in RECIPE_KEYS else f"train.{key}"
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
