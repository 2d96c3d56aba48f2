"""Documents for `ftw data synth`: the user's PDF, DOCX, HTML, text and transcript files as
passages of text, each with the place it starts, so a generated row can point back to it.

The place is the page of a PDF; the paragraph of a DOCX (counting the paragraphs that have
text, a table as one); the line of a text, Markdown, HTML or subtitle file. A file that gives
no text is a DocumentReject whose reason says what to do: nothing given is dropped silently
(hidden files and folders in a folder are skipped, as `ftw data check` does).

pypdf, python-docx and BeautifulSoup are imported where they are used: `ftw --help` doesn't
load them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.core.errors import FtwError
from wrapper.core.paths import display_path
from wrapper.data.readers import (
    BOM,
    Problem,
    Progress,
    Record,
    read_plain_segments,
    read_subtitle_segments,
    read_text_lines,
)

DOCUMENT_SUFFIXES = (".pdf", ".docx", ".txt", ".md", ".html", ".htm", ".srt", ".vtt")
KINDS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".txt": "text",
    ".md": "text",
    ".html": "html",
    ".htm": "html",
    ".srt": "subtitles",
    ".vtt": "subtitles",
}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # old .doc files, and Office's password-protected ones
# Text that holds this share of control bytes is not text, even without a NUL.
CONTROL_SHARE = 0.05
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")

Passages = list[tuple[int, str]]  # (place, text)
Reader = Callable[[Path, bytes], tuple[Passages, list[str]]]  # a file's bytes -> passages, notes; or raises Problem


@dataclass
class Document:
    path: Path
    name: str  # as the user would type it
    kind: str  # pdf | docx | html | text | subtitles
    sha256: str  # of the file's bytes
    passages: list[tuple[int, str]]  # (place, text): the page of a PDF, the paragraph of a DOCX, else the line
    notes: list[str] = field(default_factory=list)  # worth saying, not fatal ("pages 3, 7 have no text")

    def where(self, place: int) -> str:
        return f"{self.name}:{place}"


@dataclass
class DocumentReject:
    name: str
    kind: str  # unsupported | empty | no_text_layer | encrypted | damaged | binary | not_utf8
    reason: str  # one line: what is wrong and what to do


def read_documents(paths: list[Path]) -> Iterator[Document | DocumentReject]:
    """Each file given, and each file under each folder given (sorted), read in turn.
    A path that doesn't exist stops everything before the first file is read (FtwError)."""
    for path in _files(paths):
        yield read_document(path)


def read_document(path: Path) -> Document | DocumentReject:
    name = display_path(path)
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        what = f"'{path.suffix}' files" if path.suffix else "files without an extension"
        return DocumentReject(
            name, "unsupported", f"{what} can't be read: convert it to one of {', '.join(DOCUMENT_SUFFIXES)}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FtwError(f"{name}: can't read it ({exc.strerror or exc})") from exc
    try:
        if not data.removeprefix(BOM).strip():
            raise Problem("empty", "empty file: check that it was saved or copied in full")
        with _quiet():
            passages, notes = READERS[kind](path, data)
        if not passages:
            raise Problem("empty", f"no text in this {kind} file: check that it is the document you meant")
    except Problem as problem:
        return DocumentReject(name, problem.kind, problem.reason)
    return Document(path, name, kind, hashlib.sha256(data).hexdigest(), passages, notes)


def _files(paths: list[Path]) -> list[Path]:
    missing = [display_path(path) for path in paths if not path.exists()]
    if missing:
        raise FtwError(f"no such file or folder: {', '.join(missing)}")
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                child
                for child in path.rglob("*")
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(path).parts)
            )
        else:
            files.append(path)
    # A file named on its own and inside a folder given too is read once.
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)
    return list(unique.values())


@contextmanager
def _quiet() -> Iterator[None]:
    """The libraries' own warnings go to stderr, mid-progress; what matters comes back as a
    reject or a note instead."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _one_line(exc: Exception, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _page_ranges(pages: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    runs: list[list[int]] = []
    for page in pages:
        if runs and page == runs[-1][-1] + 1:
            runs[-1].append(page)
        else:
            runs.append([page])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)


# PDF ----------------------------------------------------------------------------------------


def _read_pdf(path: Path, data: bytes) -> tuple[Passages, list[str]]:
    import pypdf
    from pypdf.errors import DependencyError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        # Many PDFs are "encrypted" with an empty user password: anyone may open them.
        if reader.is_encrypted and not reader.decrypt(""):
            raise Problem(
                "encrypted", "encrypted PDF (needs a password): decrypt it first (qpdf --decrypt in.pdf out.pdf)"
            )
        pages = list(reader.pages)
    except DependencyError as exc:
        raise Problem("encrypted", f"encrypted PDF that pypdf can't open here ({_one_line(exc)})") from exc
    except Problem:
        raise
    except Exception as exc:  # a damaged file fails in many ways inside pypdf, none of them ours to tell apart
        raise Problem("damaged", f"damaged PDF ({_one_line(exc)}): download or export it again") from exc
    passages, blank, broken = [], [], []
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text().replace("\x00", "").strip()
        except Exception as exc:  # one bad page shouldn't lose the others
            broken.append(f"page {number} can't be read ({_one_line(exc, 80)})")
            continue
        if text:
            passages.append((number, text))
        else:
            blank.append(number)
    if not passages and broken:
        raise Problem("damaged", f"damaged PDF: no page can be read ({broken[0]}): download or export it again")
    if not passages:
        raise Problem("no_text_layer", "no text layer (a scan?): run OCR first (ocrmypdf in.pdf out.pdf)")
    notes = broken
    if len(blank) == 1:
        notes.append(f"page {blank[0]} has no text")
    elif blank:
        notes.append(f"pages {_page_ranges(blank)} have no text")
    return passages, notes


# DOCX ---------------------------------------------------------------------------------------


def _read_docx(path: Path, data: bytes) -> tuple[Passages, list[str]]:
    import docx

    if data.startswith(OLE_MAGIC):
        if "EncryptionInfo".encode("utf-16-le") in data:
            raise Problem(
                "encrypted", "password-protected DOCX: open it in Word or LibreOffice and save it without a password"
            )
        raise Problem("damaged", "an old Word .doc named .docx: save it as .docx in Word or LibreOffice")
    try:
        blocks = [_block_text(block) for block in docx.Document(io.BytesIO(data)).iter_inner_content()]
    except Exception as exc:  # not a zip, or a zip without a Word document in it
        raise Problem("damaged", f"not a readable DOCX ({_one_line(exc)}): save it again as .docx") from exc
    return list(enumerate((text for text in blocks if text), start=1)), []


def _block_text(block) -> str:
    """A paragraph's text; a table's rows, one a line, cells joined by ' | '."""
    if not hasattr(block, "rows"):
        return block.text.strip()
    rows = []
    for row in block.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = " ".join(cell.text.split())
            if text and (not cells or cells[-1] != text):  # a merged cell comes back once per grid column
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# Text, Markdown, subtitles, HTML ------------------------------------------------------------


def _text_of(path: Path, data: bytes) -> str:
    """The file's text, or why it isn't UTF-8 text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise Problem(
            "not_utf8", f"UTF-16 text: convert it (iconv -f UTF-16 -t UTF-8 in{path.suffix} > out{path.suffix})"
        )
    head = data[: 1 << 16]
    if b"\x00" in data or len(_CONTROL.findall(head)) > CONTROL_SHARE * len(head):
        raise Problem(
            "binary", f"binary file with a text extension ({path.suffix}): give the document in its own format"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for number, _, problem, _ in read_text_lines(path, Progress()):
        if problem is not None:
            fix = "" if "convert" in problem.reason else ": save it as UTF-8"
            raise Problem("not_utf8", f"line {number}: {problem.reason}{fix}")
    raise Problem("not_utf8", "not UTF-8: save it as UTF-8")  # the file changed while it was read


def _read_segments(segments: Callable[[Path, Progress], Iterator[Record]]) -> Reader:
    """Text and transcripts are read by wrapper/data/readers.py, as `ftw data check` reads them."""

    def read(path: Path, data: bytes) -> tuple[Passages, list[str]]:
        _text_of(path, data)
        return [(record.line, record.value) for record in segments(path, Progress())], []

    return read


# Their contents are never the document's text.
HTML_NOISE = ("head", "script", "style", "noscript", "template", "nav", "svg", "iframe", "object")
HTML_BLOCKS = {
    *("html", "body", "main", "article", "section", "header", "footer", "aside", "div", "form", "fieldset"),
    *("h1", "h2", "h3", "h4", "h5", "h6", "hgroup", "p", "pre", "blockquote", "address", "figure", "figcaption"),
    *("ul", "ol", "li", "dl", "dt", "dd", "details", "summary", "dialog", "legend"),
    *("table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td"),
}


def _read_html(path: Path, data: bytes) -> tuple[Passages, list[str]]:
    """One passage per block element (p, li, h2, td, ...), at the line its tag opens on. Text
    around a nested block is a passage of its own, at its enclosing block's line."""
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(_text_of(path, data), "html.parser")
    for tag in soup(HTML_NOISE):
        tag.decompose()
    passages: list[tuple[int, str]] = []
    block, parts = None, []

    def flush() -> None:
        text = _squeeze("".join(parts), keep_lines=block is not None and block.name == "pre")
        if text:
            passages.append((getattr(block, "sourceline", None) or 1, text))
        parts.clear()

    for node in soup.descendants:
        # Exactly NavigableString: its subclasses are comments, doctypes, CDATA and the like.
        is_text = type(node) is NavigableString
        if not is_text and node.name != "br":
            continue
        owner = next((parent for parent in node.parents if parent.name in HTML_BLOCKS), None)
        if owner is not block:
            flush()
            block = owner
        in_pre = owner is not None and owner.name == "pre"
        # A line end in the source is a space; only <br> (or a line of <pre>) ends a line.
        if not is_text:
            parts.append("\n")
        else:
            parts.append(str(node) if in_pre else str(node).replace("\n", " "))
    flush()
    return passages, []


def _squeeze(text: str, keep_lines: bool) -> str:
    if keep_lines:
        return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


READERS: dict[str, Reader] = {
    "pdf": _read_pdf,
    "docx": _read_docx,
    "html": _read_html,
    "text": _read_segments(read_plain_segments),
    "subtitles": _read_segments(read_subtitle_segments),
}
