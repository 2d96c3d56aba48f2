"""Builders of small documents for the `ftw data synth` tests: each writes one file and returns
its path, so no binary test files live in git. Plain functions, not pytest fixtures, so that
end-to-end tests can build the same documents.

- make_text_pdf(path, pages): a PDF written by hand (Helvetica, one content stream per page),
  each page carrying its string; "\\n" starts a new line on the page, "" leaves the page
  without text.
- make_scanned_pdf(path, pages=2): pages with a drawing and no text, as a scan without OCR.
- make_encrypted_pdf(path, pages, user_password="secret"): make_text_pdf's PDF encrypted by
  pypdf; user_password="" makes the kind anyone may open (only the owner password is set).
- make_damaged_pdf(path, pages): a text PDF cut short after its header.
- make_docx(path, paragraphs, table=None): a DOCX by python-docx, with a table after the
  paragraphs when given (rows of cell strings).
- make_text(path, text): any text file (.txt, .md, .html, .vtt, ...), written as UTF-8.
- make_vtt(path, cues): a WebVTT transcript of (start s, end s, text) cues.
- make_binary(path): bytes with NULs, whatever the name says.
- make_empty(path): a zero-byte file.
"""

from __future__ import annotations

from pathlib import Path

PAGE_WIDTH, PAGE_HEIGHT = 612, 792


def _pdf_string(text: str) -> bytes:
    """A PDF literal string: ASCII (or Latin-1) with its delimiters escaped."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1") + b")"


def _page_content(text: str) -> bytes:
    if not text:
        return b"0.5 g 72 72 468 648 re f"  # a grey box: something on the page, no text
    lines = [b"BT /F1 12 Tf 14 TL 72 720 Td"]
    for number, line in enumerate(text.split("\n")):
        lines.append((b"T* " if number else b"") + _pdf_string(line) + b" Tj")
    lines.append(b"ET")
    return b"\n".join(lines)


def _write_pdf(path: Path, contents: list[bytes]) -> Path:
    """A minimal valid PDF: catalog, page tree, Helvetica, one page per content stream, exact xref."""
    count = len(contents)
    page_ids = [4 + 2 * index for index in range(count)]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % pid for pid in page_ids) + b"] /Count %d >>" % count,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for pid, content in zip(page_ids, contents):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] " % (PAGE_WIDTH, PAGE_HEIGHT)
            + b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (pid + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    path.write_bytes(bytes(out))
    return path


def make_text_pdf(path: Path, pages: list[str]) -> Path:
    return _write_pdf(path, [_page_content(text) for text in pages])


def make_scanned_pdf(path: Path, pages: int = 2) -> Path:
    return _write_pdf(path, [_page_content("") for _ in range(pages)])


def make_encrypted_pdf(path: Path, pages: list[str], user_password: str = "secret") -> Path:
    from pypdf import PdfReader, PdfWriter

    plain = make_text_pdf(path.with_name(path.name + ".plain.pdf"), pages)
    writer = PdfWriter(clone_from=PdfReader(plain))
    # RC4 is built into pypdf; AES would need the cryptography package to write.
    writer.encrypt(user_password, owner_password="owner-secret", algorithm="RC4-128")
    with path.open("wb") as handle:
        writer.write(handle)
    plain.unlink()
    return path


def make_damaged_pdf(path: Path, pages: list[str] | None = None) -> Path:
    """A download cut short: the header and the start of the first object, no page tree, no xref."""
    make_text_pdf(path, pages or ["This text never arrived."])
    path.write_bytes(path.read_bytes()[:60])
    return path


def make_docx(path: Path, paragraphs: list[str], table: list[list[str]] | None = None) -> Path:
    import docx

    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for row, cells in zip(grid.rows, table):
            for cell, text in zip(row.cells, cells):
                cell.text = text
    document.save(str(path))
    return path


def make_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def make_vtt(path: Path, cues: list[tuple[float, float, str]]) -> Path:
    def stamp(seconds: float) -> str:
        return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:06.3f}"

    blocks = ["WEBVTT"] + [f"{stamp(start)} --> {stamp(end)}\n{text}" for start, end, text in cues]
    return make_text(path, "\n\n".join(blocks) + "\n")


def make_binary(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    return path


def make_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path
