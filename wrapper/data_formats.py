"""Reading the user's data files as a stream of rows, each with its file:line.

Two layers:
- readers turn a file into Records (line, parsed value or the reason it can't be read):
  JSONL line by line, a JSON array element by element (a chunked raw_decode that keeps
  line numbers, never the whole file), text and Markdown paragraph by paragraph, and
  .srt/.vtt subtitles cue by cue as plain text;
- formats turn a record into a normalised Row (conversation turns, system, tools; or a
  text) or a Problem saying why not: Alpaca, ShareGPT, OpenAI messages, raw text
  ({"text": ...} rows, .txt/.md/.srt/.vtt) and application chat logs mapped by the
  recipe's data.field_map.

A UTF-8 BOM and CRLF line ends are accepted everywhere.
"""

from __future__ import annotations

import codecs
import html
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt", ".md")
SUBTITLE_SUFFIXES = (".srt", ".vtt")
SUFFIXES = JSON_SUFFIXES + TEXT_SUFFIXES + SUBTITLE_SUFFIXES
BOM = b"\xef\xbb\xbf"
CHUNK_BYTES = 1 << 20
MAX_UNTERMINATED = 16 << 20  # a JSON string still open after this many characters is broken, not cut by a chunk

SFT_FORMATS = ("alpaca", "sharegpt", "openai", "mapped")
TEXT_FORMATS = ("text", "plain", "subtitles")
FORMAT_HELP = ("expected Alpaca (instruction, output), ShareGPT (conversations), OpenAI (messages), "
               "raw text (text), or a chat log mapped by data.field_map in the recipe")

# ShareGPT roles as LLaMA-Factory's sharegpt converter names them; synonyms are normalised.
USER, ASSISTANT, FUNCTION, OBSERVATION = "human", "gpt", "function_call", "observation"
ROLE_SYNONYMS = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "model": ASSISTANT,
                 "function_call": FUNCTION, "observation": OBSERVATION, "tool": OBSERVATION, "function": OBSERVATION}
PROMPT_ROLES = (USER, OBSERVATION)     # turns 0, 2, 4, ...
ANSWER_ROLES = (ASSISTANT, FUNCTION)   # turns 1, 3, 5, ...


class Problem(Exception):
    """Why one row can't be used; `kind` groups the report (invalid_json, missing_field, ...)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass
class Record:
    """One row as read: the parsed value, or the reason it couldn't be read (and its raw text)."""

    line: int
    value: Any = None
    problem: Problem | None = None
    raw: str | None = None
    fatal: bool = False  # the rest of the file can't be read (a JSON array broken mid-way)


@dataclass
class Row:
    """A usable row: conversation turns (role, content) for SFT, or a text for pre-training."""

    turns: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None
    tools: str | None = None
    text: str | None = None
    lang: str | None = None        # from the row's lang field; guessed later when None
    rating: float | None = None

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
# readers


def kind_of_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in TEXT_SUFFIXES:
        return "plain"
    if suffix in SUBTITLE_SUFFIXES:
        return "subtitles"
    return "unknown"


def expand_paths(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Files to read (folders walked, sorted) and files skipped for their extension."""
    files, skipped = [], []
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in child.relative_to(path).parts):
                    continue
                (files if child.suffix.lower() in SUFFIXES else skipped).append(child)
        else:
            files.append(path)
    return files, skipped


def _utf8_problem(exc: UnicodeDecodeError, raw: bytes) -> Problem:
    bad = raw[exc.start:exc.start + 1].hex()
    hint = ""
    try:
        guess = raw.decode("cp1251")
        if sum("\u0400" <= ch <= "\u04ff" for ch in guess) > len(guess) // 4:
            hint = " (looks like cp1251: convert with `iconv -f cp1251 -t utf-8`)"
    except UnicodeDecodeError:
        pass
    return Problem("not_utf8", f"not UTF-8: byte 0x{bad} at column {exc.start + 1}{hint}")


def _json_problem(exc: json.JSONDecodeError) -> Problem:
    return Problem("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")


class Progress:
    """Byte counter and sha256 of everything read from one file; reports progress every MB."""

    def __init__(self, on_bytes: Callable[[int], None] | None = None):
        import hashlib

        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.on_bytes = on_bytes
        self.pending = 0

    def __call__(self, data: bytes) -> None:
        self.sha256.update(data)
        self.bytes += len(data)
        self.pending += len(data)
        if self.pending >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.on_bytes and self.pending:
            self.on_bytes(self.pending)
        self.pending = 0


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        head = handle.read(4096).removeprefix(BOM)
    return head.lstrip(b" \t\r\n")[:1]


def read_json_records(path: Path, seen: Progress | None = None) -> Iterator[Record]:
    """Records of a JSON array, or of a JSONL file (one JSON value per line)."""
    seen = seen or Progress()
    if _first_byte(path) == b"[":
        yield from _read_json_array(path, seen)
    else:
        yield from _read_jsonl(path, seen)


def _read_jsonl(path: Path, seen: Progress) -> Iterator[Record]:
    decode = json.loads
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            seen(raw)
            if number == 1:
                raw = raw.removeprefix(BOM)
            raw = raw.strip()
            if not raw:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Record(number, problem=_utf8_problem(exc, raw), raw=raw.decode("utf-8", "backslashreplace"))
                continue
            try:
                yield Record(number, decode(text))
            except json.JSONDecodeError as exc:
                yield Record(number, problem=_json_problem(exc), raw=text)
            except RecursionError:
                yield Record(number, problem=Problem("invalid_json", "invalid JSON: nested too deeply"), raw=text)


_WS = re.compile(r"[ \t\r\n]*")


def _read_json_array(path: Path, seen: Progress) -> Iterator[Record]:
    """Elements of a top-level JSON array, read in 1 MB chunks, each with the line it starts on.

    Invalid bytes are decoded as lone surrogates (surrogateescape) so the element that holds
    them is reported as not UTF-8 when its text is used. A syntax error in an array leaves
    no reliable way to find the next element: it is reported as fatal and reading stops.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")
    raw_decode = json.JSONDecoder().raw_decode
    with path.open("rb") as handle:
        buf, pos, line, eof = "", 0, 1, False

        def more(at_least: int = CHUNK_BYTES) -> None:
            nonlocal buf, pos, eof
            data = handle.read(max(at_least, CHUNK_BYTES))
            seen(data)
            eof = not data
            buf = buf[pos:] + decoder.decode(data, final=eof)
            pos = 0

        def skip_ws() -> None:
            nonlocal pos, line
            while True:
                end = _WS.match(buf, pos).end()
                line += buf.count("\n", pos, end)
                pos = end
                if pos < len(buf) or eof:
                    return
                more()

        def fatal(reason: str) -> Record:
            return Record(line, problem=Problem("invalid_json", f"invalid JSON: {reason}; the rest of the "
                                                "file can't be read as array elements"), fatal=True)

        more()
        skip_ws()
        if buf[pos:pos + 1] != "[":
            yield fatal("expected '[' at the start of a JSON array")
            return
        pos += 1
        first = True
        while True:
            skip_ws()
            if pos >= len(buf):
                yield fatal("the file ends before the array's closing ']'")
                return
            if buf[pos] == "]" and first:
                pos += 1
                break
            try:
                value, end = raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                cut_short = exc.pos >= len(buf) - 64 or exc.msg.startswith("Unterminated string")
                if not eof and cut_short and len(buf) - pos < MAX_UNTERMINATED:
                    more(len(buf) - pos)  # the element continues in the next chunk
                    continue
                line_of_error = line + buf.count("\n", pos, exc.pos)
                record = fatal(f"{exc.msg}")
                record.line = line_of_error
                yield record
                return
            except RecursionError:
                yield fatal("nested too deeply")
                return
            start_line = line
            line += buf.count("\n", pos, end)
            pos = end
            first = False
            yield Record(start_line, value)
            skip_ws()
            separator = buf[pos:pos + 1]
            if separator == ",":
                pos += 1
                skip_ws()
                if buf[pos:pos + 1] == "]":
                    yield fatal("trailing comma before ']'")
                    return
                continue
            if separator == "]":
                pos += 1
                break
            yield fatal(f"expected ',' or ']' after the element, found {separator!r}" if separator
                        else "the file ends before the array's closing ']'")
            return
        skip_ws()
        if pos < len(buf):
            yield fatal("more content after the array's closing ']'")


def read_text_lines(path: Path, seen: Progress) -> Iterator[tuple[int, str | None, Problem | None, bytes]]:
    """(line number, text without its line end, problem, raw bytes) for each line of a text file."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            seen(raw)
            if number == 1:
                raw = raw.removeprefix(BOM)
            raw = raw.rstrip(b"\r\n")
            try:
                yield number, raw.decode("utf-8"), None, raw
            except UnicodeDecodeError as exc:
                yield number, None, _utf8_problem(exc, raw), raw


def read_plain_segments(path: Path, seen: Progress) -> Iterator[Record]:
    """Paragraphs of a .txt/.md file (blocks between blank lines), each as a Record of its first line."""
    block: list[str] = []
    start = 0
    for number, text, problem, raw in read_text_lines(path, seen):
        if problem is not None:
            yield Record(number, problem=problem, raw=raw.decode("utf-8", "backslashreplace"))
            continue
        if text.strip():
            if not block:
                start = number
            block.append(text.rstrip())
        elif block:
            yield Record(start, "\n".join(block))
            block = []
    if block:
        yield Record(start, "\n".join(block))


_TIMING = re.compile(r"^\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})")
_VOICE = re.compile(r"<v(?:\.[^ >]*)?\s+([^>]+)>")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")
PARAGRAPH_GAP_S = 2.0  # a silence this long between cues starts a new paragraph


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    return sum(float(part) * 60 ** index for index, part in enumerate(reversed(parts)))


def _cue_text(line: str) -> tuple[str | None, str]:
    """(speaker named by a <v Name> tag, or None; the text without tags and entities)."""
    voice = _VOICE.search(line)
    return (voice.group(1).strip() if voice else None), html.unescape(_TAG.sub("", line)).strip()


def read_subtitle_segments(path: Path, seen: Progress) -> Iterator[Record]:
    """Paragraphs of transcript text from .srt / .vtt cues: numbers, timings, tags, NOTE/STYLE
    blocks and the rolling repeats of automatic captions removed; a pause starts a paragraph."""
    paragraph: list[str] = []
    para_line = 0
    last_emitted = ""
    last_end: float | None = None
    speaker: str | None = None
    block: list[tuple[int, str]] = []

    def flush_paragraph() -> Iterator[Record]:
        nonlocal paragraph
        if paragraph:
            yield Record(para_line, " ".join(paragraph))
        paragraph = []

    def take_block(lines: list[tuple[int, str]]) -> Iterator[Record]:
        nonlocal para_line, last_emitted, last_end, speaker
        timing_at = next((i for i, (_, text) in enumerate(lines) if _TIMING.match(text)), None)
        if timing_at is None:
            return  # WEBVTT header, NOTE, STYLE, REGION, or a stray cue number
        match = _TIMING.match(lines[timing_at][1])
        begin, end = _seconds(match.group(1)), _seconds(match.group(2))
        if last_end is not None and begin - last_end >= PARAGRAPH_GAP_S:
            yield from flush_paragraph()
        last_end = end
        for number, text in lines[timing_at + 1:]:
            voice, cleaned = _cue_text(text)
            if not cleaned or cleaned == last_emitted:
                continue
            if voice and voice != speaker:
                yield from flush_paragraph()  # a new speaker starts a paragraph, named once
                speaker = voice
                cleaned = f"{voice}: {cleaned}"
            if not paragraph:
                para_line = number
            paragraph.append(cleaned)
            last_emitted = cleaned.removeprefix(f"{voice}: ") if voice else cleaned

    for number, text, problem, raw in read_text_lines(path, seen):
        if problem is not None:
            yield Record(number, problem=problem, raw=raw.decode("utf-8", "backslashreplace"))
            continue
        if text.strip():
            block.append((number, text))
        elif block:
            yield from take_block(block)
            block = []
    if block:
        yield from take_block(block)
    yield from flush_paragraph()


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
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


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
            raise Problem("wrong_type", f"field 'history' must be an array of [prompt, response] pairs, "
                                        f"found {_type_name(history)}")
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
            raise Problem("wrong_type", f"{where} must be an object with '{role_key}' and '{content_key}', "
                                        f"found {_type_name(message)}")
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
            raise Problem("bad_turns", f"{where}: unknown role {role!r} (expected user/human, assistant/gpt, "
                                       "system, function_call or observation/tool)")
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
    return Row([(USER, prompt), (ASSISTANT, output)], system=column("system", False) or None,
               lang=_lang(record, field_map["lang"]) if field_map.get("lang") else _lang(record),
               rating=rating)


def parse_row(record: Any, fmt: str, field_map: dict[str, str] | None = None, need_rating: bool = False) -> Row:
    """A record in format `fmt` as a Row, or a Problem naming the field that's wrong."""
    if not isinstance(record, dict):
        raise Problem("wrong_type", f"a row must be a JSON object, found {_type_name(record)}")
    if fmt == "alpaca":
        return _alpaca(record)
    if fmt == "sharegpt":
        return _sharegpt(record)
    if fmt == "openai":
        return _openai(record)
    if fmt == "text":
        return _text(record)
    if fmt == "mapped":
        return _mapped(record, field_map or {}, need_rating)
    raise ValueError(fmt)


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


_LATIN_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))
# UTF-8 lead bytes of each script's letters, counted on a sample of the row's bytes.
_SCRIPTS = (("ru", (b"\xd0", b"\xd1")), ("el", (b"\xce", b"\xcf")), ("he", (b"\xd7",)),
            ("ar", (b"\xd8", b"\xd9", b"\xda", b"\xdb")), ("ja", (b"\xe3\x81", b"\xe3\x82", b"\xe3\x83")),
            ("zh", (b"\xe4", b"\xe5", b"\xe6", b"\xe7", b"\xe8", b"\xe9")),
            ("ko", (b"\xea", b"\xeb", b"\xec", b"\xed")))
GUESS_NOTE = "guessed from the script: Cyrillic = ru, Latin = en, Han = zh, kana = ja, Hangul = ko, ..."


def guess_language(sample: bytes) -> str:
    """A cheap script-based guess: the script with the most letters in the first 1,000 bytes."""
    sample = sample[:1000]
    latin = len(sample) - len(sample.translate(None, _LATIN_LETTERS))
    cyrillic = sample.count(b"\xd0") + sample.count(b"\xd1")
    if max(latin, 2 * cyrillic) * 2 > len(sample):  # mostly one of the two: no need to look further
        return "en" if latin > cyrillic else "ru"
    counts = {"en": latin}
    for lang, leads in _SCRIPTS:
        counts[lang] = sum(sample.count(lead) for lead in leads)
    if counts["ja"]:
        counts["ja"] += counts["zh"]  # Japanese mixes kana with Han
    lang, count = max(counts.items(), key=lambda item: item[1])
    return lang if count else "unknown"
