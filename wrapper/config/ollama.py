"""Ollama's side of a recipe: the PARAMETER names and types `ollama create` accepts, checked
before training (a typo would otherwise surface at the very end), and the characters a
Modelfile value can hold."""

from __future__ import annotations

from wrapper.config.yamldoc import did_you_mean
from wrapper.core.errors import FtwError

# Ollama's options (api.Options and its Runner part) and the type each takes. Others are
# refused by `ollama create`, or accepted and ignored (the deprecated ones).
OLLAMA_PARAMETERS: dict[str, type] = {
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
}


def printable(text: str) -> bool:
    """Ollama's Modelfile parser drops characters Go's strconv.IsPrint rejects, except blanks and line ends."""
    return all(ch.isprintable() or ch in " \t\r\n" for ch in text)


def single_line_fits(text: str) -> bool:
    return printable(text) and "\n" not in text and "\r" not in text


def check_parameters(parameters: dict, where) -> list[tuple[str, str]]:
    """The recipe's ollama.parameters as (name, value) PARAMETER lines; `where(key)` names the recipe line."""
    lines: list[tuple[str, str]] = []
    for key, value in parameters.items():
        kind = OLLAMA_PARAMETERS.get(key)
        if kind is None:
            raise FtwError(
                f"{where(key)}: Ollama has no parameter '{key}'.{did_you_mean(str(key), OLLAMA_PARAMETERS)} "
                f"Known: {', '.join(sorted(OLLAMA_PARAMETERS))}."
            )
        values = value if isinstance(value, list) else [value]
        if kind is not list and isinstance(value, list):
            raise FtwError(f"{where(key)}: '{key}' takes one value, found a list")
        for item in values:
            lines.append((key, _parameter_value(key, kind, item, where)))
    return lines


def _parameter_value(key: str, kind: type, value, where) -> str:
    if kind is list:  # stop strings
        if not isinstance(value, str) or not value or not single_line_fits(value):
            raise FtwError(
                f"{where(key)}: a stop is a non-empty one-line string of printable characters, found {value!r}"
            )
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise FtwError(f"{where(key)}: '{key}' is true or false, found {value!r}")
        return "true" if value else "false"
    ok = (
        isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    if not ok:
        raise FtwError(f"{where(key)}: '{key}' is {'an integer' if kind is int else 'a number'}, found {value!r}")
    return str(value)
