"""Row formats: which format a record is written in (the one detector render, check and
prepare share), and the record as a normalised Row (conversation turns, system, tools;
or a text) or a Problem saying why not: Alpaca, ShareGPT, OpenAI messages, raw text
({"text": ...} rows, .txt/.md/.srt/.vtt) and application chat logs mapped by the
recipe's data.field_map. Then what the scan needs of a row: its content hash keys (its
language is guessed in langs.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from wrapper.data.readers import Problem

SFT_FORMATS = ("alpaca", "sharegpt", "openai", "mapped")
TEXT_FORMATS = ("text", "plain", "subtitles")
FORMAT_HELP = (
    "expected Alpaca (instruction, output), ShareGPT (conversations), OpenAI (messages), "
    "raw text (text), or a chat log mapped by data.field_map in the recipe"
)

# ShareGPT roles as LLaMA-Factory's sharegpt converter names them; synonyms are normalised.
USER, ASSISTANT, FUNCTION, OBSERVATION = "human", "gpt", "function_call", "observation"
ROLE_SYNONYMS = {
    "human": USER,
    "user": USER,
    "gpt": ASSISTANT,
    "assistant": ASSISTANT,
    "model": ASSISTANT,
    "function_call": FUNCTION,
    "observation": OBSERVATION,
    "tool": OBSERVATION,
    "function": OBSERVATION,
}
PROMPT_ROLES = (USER, OBSERVATION)  # turns 0, 2, 4, ...
ANSWER_ROLES = (ASSISTANT, FUNCTION)  # turns 1, 3, 5, ...


@dataclass
class Row:
    """A usable row: conversation turns (role, content) for SFT, or a text for pre-training."""

    turns: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None
    tools: str | None = None
    text: str | None = None
    lang: str | None = None  # from the row's lang field; guessed later when None
    rating: float | None = None
    fact: str | None = None  # the fact this row phrases (its `fact` key): the knowledge split groups by it
    chunk: str | None = None  # the document chunk it was written from (its `chunk` key, as `ftw data synth` writes)

    @property
    def pieces(self) -> list[str]:
        """The texts that get tokenized: system, tools and every turn's content (or the text)."""
        if self.text is not None:
            return [self.text]
        head = [p for p in (self.system, self.tools) if p]
        return head + [content for _, content in self.turns]

    def as_output(self) -> dict:
        """The row as the prepared ShareGPT (or text) file holds it."""
        if self.text is not None:
            return {"text": self.text}
        out: dict[str, Any] = {"conversations": [{"from": role, "value": content} for role, content in self.turns]}
        if self.system:
            out["system"] = self.system
        if self.tools:
            out["tools"] = self.tools
        return out


# ---------------------------------------------------------------------------------------
# formats


def detect_format(record: Any, field_map: dict[str, str] | None = None) -> str | None:
    """The format a row is written in, from its keys (None: no known format)."""
    if not isinstance(record, dict):
        return None
    if field_map and (field_map.get("instruction") in record or field_map.get("output") in record):
        return "mapped"
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    return None


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def _string(record: dict, key: str, label: str | None = None, required: bool = True) -> str | None:
    label = label or key
    if key not in record or record[key] is None:
        if required:
            raise Problem("missing_field", f"missing field '{label}'")
        return None
    value = record[key]
    if not isinstance(value, str):
        raise Problem("wrong_type", f"field '{label}' must be a string, found {_type_name(value)}")
    if required and not value.strip():
        raise Problem("empty_field", f"empty field '{label}'")
    return value


def _lang(record: dict, key: str = "lang") -> str | None:
    value = _string(record, key, required=False)
    if value is None or not value.strip():
        return None
    return re.split(r"[-_]", value.strip().lower(), maxsplit=1)[0]


def _alpaca(record: dict) -> Row:
    instruction = _string(record, "instruction", required=False)
    if instruction is None:
        raise Problem("missing_field", "missing field 'instruction'")
    query = _string(record, "input", required=False)
    output = _string(record, "output")
    if not instruction.strip() and not (query or "").strip():
        raise Problem("empty_field", "empty field 'instruction'")
    turns: list[tuple[str, str]] = []
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise Problem(
                "wrong_type",
                f"field 'history' must be an array of [prompt, response] pairs, found {_type_name(history)}",
            )
        for index, pair in enumerate(history):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise Problem("wrong_type", f"history[{index}] must be a [prompt, response] pair of strings")
            if not (pair[0].strip() and pair[1].strip()):
                raise Problem("empty_field", f"empty text in history[{index}]")
            turns += [(USER, pair[0]), (ASSISTANT, pair[1])]
    # LLaMA-Factory's alpaca converter joins instruction and input with a newline.
    prompt = "\n".join(part for part in (instruction, query) if part)
    turns += [(USER, prompt), (ASSISTANT, output)]
    return Row(turns, system=_string(record, "system", required=False) or None, lang=_lang(record))


def _turns(messages: Any, key: str, role_key: str, content_key: str) -> tuple[list[tuple[str, str]], str | None]:
    if not isinstance(messages, list):
        raise Problem("wrong_type", f"field '{key}' must be an array of messages, found {_type_name(messages)}")
    system = None
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        where = f"{key}[{index}]"
        if not isinstance(message, dict):
            raise Problem(
                "wrong_type",
                f"{where} must be an object with '{role_key}' and '{content_key}', found {_type_name(message)}",
            )
        role = _string(message, role_key, f"{where}.{role_key}")
        content = message.get(content_key)
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            content = "".join(str(p.get("text", "")) for p in content)  # OpenAI content parts
            message = {**message, content_key: content}
        content = _string(message, content_key, f"{where}.{content_key}")
        if role == "system":
            if index != 0:
                raise Problem("bad_turns", f"{where}: a system message is only allowed first")
            system = content
            continue
        if role not in ROLE_SYNONYMS:
            raise Problem(
                "bad_turns",
                f"{where}: unknown role {role!r} (expected user/human, assistant/gpt, "
                "system, function_call or observation/tool)",
            )
        role = ROLE_SYNONYMS[role]
        expected = PROMPT_ROLES if len(turns) % 2 == 0 else ANSWER_ROLES
        if role not in expected:
            side = "a user (or observation)" if expected is PROMPT_ROLES else "an assistant (or function_call)"
            raise Problem("bad_turns", f"{where}: turns must alternate; {role!r} is where {side} turn belongs")
        turns.append((role, content))
    if not turns:
        raise Problem("empty_field", f"empty field '{key}': no turns")
    if len(turns) % 2:
        raise Problem("bad_turns", f"'{key}' ends with a user turn: no answer to learn from")
    return turns, system


def _tools(record: dict) -> str | None:
    tools = record.get("tools")
    if tools is None or tools == "":
        return None
    if isinstance(tools, (list, dict)):
        return json.dumps(tools, ensure_ascii=False)
    if not isinstance(tools, str):
        raise Problem("wrong_type", f"field 'tools' must be a string (JSON), found {_type_name(tools)}")
    return tools


def _sharegpt(record: dict) -> Row:
    turns, first_system = _turns(record["conversations"], "conversations", "from", "value")
    system = first_system or _string(record, "system", required=False) or None
    return Row(turns, system=system, tools=_tools(record), lang=_lang(record))


def _openai(record: dict) -> Row:
    turns, system = _turns(record["messages"], "messages", "role", "content")
    return Row(turns, system=system, tools=_tools(record), lang=_lang(record))


def _text(record: dict) -> Row:
    return Row(text=_string(record, "text"), lang=_lang(record))


def _mapped(record: dict, field_map: dict[str, str], need_rating: bool) -> Row:
    def column(role: str, required: bool) -> str | None:
        key = field_map.get(role)
        return _string(record, key, required=required) if key else None

    instruction = column("instruction", True)
    query = column("input", False)
    output = column("output", True)
    rating = None
    rating_key = field_map.get("rating")
    if rating_key and (need_rating or rating_key in record):
        value = record.get(rating_key)
        if value is None:
            raise Problem("missing_field", f"missing field '{rating_key}'")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Problem("wrong_type", f"field '{rating_key}' must be a number, found {_type_name(value)}")
        rating = float(value)
    prompt = "\n".join(part for part in (instruction, query) if part)
    return Row(
        [(USER, prompt), (ASSISTANT, output)],
        system=column("system", False) or None,
        lang=_lang(record, field_map["lang"]) if field_map.get("lang") else _lang(record),
        rating=rating,
    )


def parse_row(record: Any, fmt: str, field_map: dict[str, str] | None = None, need_rating: bool = False) -> Row:
    """A record in format `fmt` as a Row, or a Problem naming the field that's wrong."""
    if not isinstance(record, dict):
        raise Problem("wrong_type", f"a row must be a JSON object, found {_type_name(record)}")
    if fmt == "alpaca":
        row = _alpaca(record)
    elif fmt == "sharegpt":
        row = _sharegpt(record)
    elif fmt == "openai":
        row = _openai(record)
    elif fmt == "text":
        row = _text(record)
    elif fmt == "mapped":
        row = _mapped(record, field_map or {}, need_rating)
    else:
        raise ValueError(fmt)
    row.fact, row.chunk = _group_key(record, "fact"), _group_key(record, "chunk")
    if row.text is not None and row.fact is not None:
        raise Problem(
            BAD_GROUP,
            "field 'fact' on a raw-text row: raw text is cut into chunks of cutoff_len tokens, so a row of it "
            "can't be one phrasing of a fact; write the phrasings as conversations, or remove 'fact'",
        )
    return row


# A row's `fact` or `chunk` that isn't a usable id: `ftw data prepare` refuses the data rather than set the row
# aside, since the rows of one fact or chunk would then be split without it (docs/data.md#facts).
BAD_GROUP = "bad_group"


def _group_key(record: dict, key: str) -> str | None:
    """The row's `fact` or `chunk` id; absent or null is None."""
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Problem(
            BAD_GROUP,
            f"field '{key}' must be a string (an id shared by the rows of one {key}), found {_type_name(value)} "
            f"{json.dumps(value, ensure_ascii=False)[:40]}: write it as a string, or remove the key",
        )
    if not value.strip():
        raise Problem(BAD_GROUP, f"empty field '{key}': give the id of the {key}, or remove the key")
    return value


def unknown_format(record: Any) -> Problem:
    if not isinstance(record, dict):
        return Problem("wrong_type", f"a row must be a JSON object, found {_type_name(record)}")
    keys = ", ".join(list(record)[:8]) or "none"
    return Problem("unknown_format", f"unknown format (keys: {keys}): {FORMAT_HELP}")


# ---------------------------------------------------------------------------------------
# hashing, normalisation, languages


def canonical(row: Row) -> str:
    """The row's content as one string: equal strings are exact duplicates."""
    if row.text is not None:
        return row.text
    parts = [row.system or "", row.tools or ""]
    parts += [f"{role}\x1e{content}" for role, content in row.turns]
    return "\x1f".join(parts)


def near_key(text: str) -> str:
    """Case and whitespace folded: equal keys are near duplicates."""
    return " ".join(text.casefold().split())


def check_encodable(text: str) -> bytes:
    """The UTF-8 bytes of a row's text; invalid bytes read from a JSON array (surrogateescape)
    and lone surrogate escapes (\\udXXX) can't be written to the prepared file."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        if 0xDC80 <= char <= 0xDCFF:
            raise Problem("not_utf8", f"not UTF-8: byte 0x{char - 0xDC00:02x}") from None
        raise Problem("not_utf8", f"not UTF-8 text: lone surrogate \\u{char:04x}") from None
