"""What the teacher is asked: a prompt per chunk language and kind, and the JSON it must return.

Templates are Jinja2 files: templates/synth/{lang}/{kind}.j2 (--kind facts: facts.j2, then
phrasings.j2 per fact, and rewrites.j2) and templates/synth/judge.j2;
a recipe's `synth.templates` folder is looked in first, file by file, so a user can replace
one prompt and keep the rest. A chunk in a language without its own template is asked in
English, with the answer language named.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2

from wrapper.core.errors import FtwError
from wrapper.core.paths import TEMPLATES_DIR, display_path

SHIPPED = TEMPLATES_DIR / "synth"
FALLBACK_LANG = "en"


def non_empty() -> dict:
    return {"type": "string", "minLength": 1}


def strings_object(fields: tuple[str, ...]) -> dict:
    """An object of exactly these non-empty string fields."""
    return {
        "type": "object",
        "properties": {name: non_empty() for name in fields},
        "required": list(fields),
        "additionalProperties": False,
    }


def list_answer(key: str, item: dict, most: int) -> dict:
    """The teacher's whole answer: {key: [1 to `most` items]}."""
    return {
        "type": "object",
        "properties": {key: {"type": "array", "items": item, "minItems": 1, "maxItems": most}},
        "required": [key],
        "additionalProperties": False,
    }


def pairs_schema(kind: str, count: int) -> dict:
    fields = ("question", "reasoning", "answer") if kind == "cot" else ("question", "answer")
    return list_answer("pairs", strings_object(fields), count)


def facts_schema(most: int) -> dict:
    """Step one of --kind facts: a chunk's atomic facts, each with the sentence of the chunk that supports it."""
    return list_answer("facts", strings_object(("fact", "support")), most)


def rewrites_schema(count: int) -> dict:
    """A chunk told again (another style, or what follows from it): its document rows."""
    return list_answer("rewrites", non_empty(), count)


JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
    "required": ["score"],
    "additionalProperties": False,
}


class Prompts:
    def __init__(self, own_folder: Path | None):
        folders = [own_folder, SHIPPED] if own_folder else [SHIPPED]
        if own_folder and not own_folder.is_dir():
            raise FtwError(f"synth.templates: no folder {own_folder}")
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(f) for f in folders]),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def _template(self, name: str) -> jinja2.Template:
        try:
            return self.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise FtwError(f"{exc.filename}:{exc.lineno}: template error: {exc.message}") from None

    def name_for(self, lang: str, kind: str) -> str:
        name = f"{lang}/{kind}.j2"
        try:
            self.env.get_template(name)
            return name
        except jinja2.TemplateNotFound:
            return f"{FALLBACK_LANG}/{kind}.j2"

    def ask(self, lang: str, kind: str, **values) -> str:
        return self._template(self.name_for(lang, kind)).render(**values).strip()

    def judge(self, **values) -> str:
        return self._template("judge.j2").render(**values).strip()

    def digests(self, names: list[str]) -> dict[str, str]:
        """Each template's file and sha256: a changed prompt is a changed setting."""
        found = {}
        for name in sorted(set(names)):
            path = Path(self._template(name).filename)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            found[name] = f"{display_path(path)} sha256 {digest}"
        return found
