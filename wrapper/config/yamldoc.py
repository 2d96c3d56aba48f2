"""YAML files whose every value remembers where it was set (file, line, key).

Recipes and profiles are read through here, so a later error, even one raised by
LLaMA-Factory, can point at the line to edit.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wrapper.core.errors import FtwError
from wrapper.core.paths import display_path


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


class RecipeLoader(yaml.SafeLoader):
    """PyYAML reads `5e-5` as a string (YAML 1.1); LLaMA-Factory's OmegaConf reads it as a float. So do we."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)


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


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def find_named(name_or_path: str, folder: Path, kind: str) -> Path:
    """A shipped file by name (folder/NAME.yaml), or a path to one."""
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
        f"unknown {kind} '{name_or_path}'.{did_you_mean(name_or_path, known)} "
        f"Known {kind}s: {', '.join(known)} (in {display_path(folder)}), or give a path to a .yaml file."
    )
