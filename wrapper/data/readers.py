"""Reading the user's data files as a stream of records, each with its file:line.

JSONL line by line, a JSON array element by element (a chunked raw_decode that keeps
line numbers, never the whole file), text and Markdown paragraph by paragraph, and
.srt/.vtt subtitles cue by cue as plain text. A record is the parsed value, or the reason
it can't be read (wrapper/data/formats.py then makes rows of the values).

A UTF-8 BOM and CRLF line ends are accepted everywhere.
"""

from __future__ import annotations

import codecs
import hashlib
import html
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt", ".md")
SUBTITLE_SUFFIXES = (".srt", ".vtt")
SUFFIXES = JSON_SUFFIXES + TEXT_SUFFIXES + SUBTITLE_SUFFIXES
BOM = b"\xef\xbb\xbf"
CHUNK_BYTES = 1 << 20
MAX_UNTERMINATED = 16 << 20  # a JSON string still open after this many characters is broken, not cut by a chunk


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
    bad = raw[exc.start : exc.start + 1].hex()
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
            return Record(
                line,
                problem=Problem(
                    "invalid_json", f"invalid JSON: {reason}; the rest of the file can't be read as array elements"
                ),
                fatal=True,
            )

        more()
        skip_ws()
        if buf[pos : pos + 1] != "[":
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
            separator = buf[pos : pos + 1]
            if separator == ",":
                pos += 1
                skip_ws()
                if buf[pos : pos + 1] == "]":
                    yield fatal("trailing comma before ']'")
                    return
                continue
            if separator == "]":
                pos += 1
                break
            yield fatal(
                f"expected ',' or ']' after the element, found {separator!r}"
                if separator
                else "the file ends before the array's closing ']'"
            )
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
    return sum(float(part) * 60**index for index, part in enumerate(reversed(parts)))


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
        for number, text in lines[timing_at + 1 :]:
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
