"""wrapper/data/documents.py: each kind of document read as passages with their place (page,
paragraph or line), and each file that can't be read as one reject that says what to do."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wrapper.core.errors import FtwError
from wrapper.data.documents import Document, DocumentReject, read_documents

from tests.support.documents import (
    make_binary,
    make_damaged_pdf,
    make_docx,
    make_empty,
    make_encrypted_pdf,
    make_scanned_pdf,
    make_text,
    make_text_pdf,
    make_vtt,
)
from tests.support.runner import REPO

PAGES = [
    "The first page is about apples.",
    "The second page says that the river is wide.\nIt has a second line.",
    "The third page closes with a (parenthesised) remark.",
]
RUSSIAN_TXT = "Первая строка первого абзаца.\nВторая строка.\n\n\nВторой абзац начинается на пятой строке.\n"
REAL_PDF = REPO.parent / "shared" / "external" / "documents" / "shared-mime-info-spec.pdf"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Names are shown relative to the current folder: here, the bare file names."""
    monkeypatch.chdir(tmp_path)


def make_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def read_one(path: Path) -> Document | DocumentReject:
    results = list(read_documents([path]))
    assert len(results) == 1, results
    return results[0]


def test_a_pdf_gives_one_passage_per_page_at_its_page_number(tmp_path):
    path = make_text_pdf(tmp_path / "report.pdf", PAGES)
    doc = read_one(path)
    assert isinstance(doc, Document) and doc.kind == "pdf" and doc.name == "report.pdf"
    assert [place for place, _ in doc.passages] == [1, 2, 3]
    place, text = next((place, text) for place, text in doc.passages if "river is wide" in text)
    assert place == 2 and doc.where(place) == "report.pdf:2"
    assert text == "The second page says that the river is wide.\nIt has a second line."
    assert "(parenthesised)" in doc.passages[2][1]
    assert doc.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert doc.notes == []


def test_pdf_pages_without_text_are_skipped_and_named_in_the_notes(tmp_path):
    doc = read_one(make_text_pdf(tmp_path / "gaps.pdf", ["one", "", "", "four", "", "six"]))
    assert doc.passages == [(1, "one"), (4, "four"), (6, "six")]
    assert doc.notes == ["pages 2-3, 5 have no text"]


def test_a_pdf_encrypted_with_an_empty_user_password_is_read(tmp_path):
    doc = read_one(make_encrypted_pdf(tmp_path / "open.pdf", PAGES, user_password=""))
    assert isinstance(doc, Document), doc
    assert doc.passages[1] == (2, PAGES[1])


def test_a_docx_gives_its_paragraphs_and_tables_numbered_in_order(tmp_path):
    paragraphs = ["Казахстан — государство в Центральной Азии.", "", "Astana is the capital.", "Третий абзац."]
    doc = read_one(make_docx(tmp_path / "notes.docx", paragraphs, table=[["city", "river"], ["Астана", "Есиль"]]))
    assert isinstance(doc, Document) and doc.kind == "docx"
    # Paragraphs with text are counted; the empty one is not, and the table is one more.
    assert doc.passages == [
        (1, paragraphs[0]),
        (2, "Astana is the capital."),
        (3, "Третий абзац."),
        (4, "city | river\nАстана | Есиль"),
    ]
    assert doc.where(2) == "notes.docx:2"


def test_text_and_markdown_give_paragraphs_at_their_first_line(tmp_path):
    doc = read_one(make_text(tmp_path / "ru.txt", RUSSIAN_TXT))
    assert doc.kind == "text"
    assert doc.passages == [
        (1, "Первая строка первого абзаца.\nВторая строка."),
        (5, "Второй абзац начинается на пятой строке."),
    ]
    assert doc.where(5) == "ru.txt:5"
    md = read_one(make_text(tmp_path / "guide.md", "# Guide\n\nSome *text*.\n\n- one\n- two\n"))
    assert md.passages == [(1, "# Guide"), (3, "Some *text*."), (5, "- one\n- two")]


def test_a_transcript_is_merged_into_paragraphs_at_their_cue_lines(tmp_path):
    cues = [(0, 2, "Good morning everyone."), (2, 4, "Today we talk about rivers."), (10, 12, "After the pause.")]
    doc = read_one(make_vtt(tmp_path / "talk.vtt", cues))
    assert doc.kind == "subtitles"
    # WEBVTT, blank, timing on line 3, text on line 4; the third cue's text is on line 10.
    assert doc.passages == [(4, "Good morning everyone. Today we talk about rivers."), (10, "After the pause.")]


def test_html_gives_its_blocks_at_their_source_lines_without_the_noise(tmp_path):
    html = (
        "<!doctype html>\n"
        "<html><head><title>Tab title</title><style>p { color: red }</style></head>\n"
        "<body>\n"
        "<nav><a href='/'>Home</a> <a href='/about'>About</a></nav>\n"
        "<h1>Rivers of Kazakhstan</h1>\n"
        "<p>The Ishim flows\n  through <b>Astana</b>.<br>It freezes in winter.</p>\n"
        "<script>var tracking = 1;</script><noscript>Enable JavaScript</noscript><!-- a comment -->\n"
        "<ul><li>Irtysh &amp; Ili</li></ul>\n"
        "</body></html>\n"
    )
    doc = read_one(make_text(tmp_path / "page.html", html))
    assert doc.kind == "html"
    assert doc.passages == [
        (5, "Rivers of Kazakhstan"),
        (6, "The Ishim flows through Astana.\nIt freezes in winter."),
        (9, "Irtysh & Ili"),
    ]


BAD = {
    "scan.pdf": (lambda path: make_scanned_pdf(path, pages=3), "no_text_layer", "ocrmypdf"),
    "locked.pdf": (lambda path: make_encrypted_pdf(path, PAGES, user_password="secret"), "encrypted", "qpdf --decrypt"),
    "cut.pdf": (lambda path: make_damaged_pdf(path, PAGES), "damaged", "download or export it again"),
    "empty.pdf": (make_empty, "empty", "saved or copied in full"),
    "fake.docx": (lambda path: make_text(path, "not a zip at all"), "damaged", "save it again as .docx"),
    "other-zip.docx": (lambda path: make_zip(path, {"a.txt": "hi"}), "damaged", "save it again as .docx"),
    "photo.txt": (make_binary, "binary", "binary file with a text extension"),
    "empty.txt": (make_empty, "empty", "saved or copied in full"),
    "blank.md": (lambda path: make_text(path, "  \n\n\t\n"), "empty", "saved or copied in full"),
    "header-only.vtt": (lambda path: make_text(path, "WEBVTT\n\nNOTE nothing said\n"), "empty", "no text"),
    "cp1251.txt": (lambda path: path.write_bytes(RUSSIAN_TXT.encode("cp1251")), "not_utf8", "iconv -f cp1251"),
    "utf16.txt": (lambda path: path.write_bytes(RUSSIAN_TXT.encode("utf-16")), "not_utf8", "iconv -f UTF-16"),
    "latin1.html": (lambda path: path.write_bytes("<p>café</p>".encode("latin-1")), "not_utf8", "save it as UTF-8"),
    "table.xlsx": (lambda path: path.write_bytes(b"PK\x03\x04"), "unsupported", "convert it to one of .pdf, .docx"),
    "README": (lambda path: make_text(path, "text"), "unsupported", "files without an extension"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_file_that_gives_no_text_is_one_reject_that_says_what_to_do(tmp_path, name):
    build, kind, advice = BAD[name]
    build(tmp_path / name)
    reject = read_one(tmp_path / name)
    assert isinstance(reject, DocumentReject), reject
    assert (reject.name, reject.kind) == (name, kind)
    assert advice in reject.reason and "\n" not in reject.reason


def test_pypdf_warnings_stay_off_the_console(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    read_one(make_damaged_pdf(tmp_path / "cut.pdf"))
    assert [record for record in caplog.records if record.name.startswith("pypdf")] == []
    assert capfd.readouterr().err == ""


def test_a_folder_gives_every_good_document_and_every_reject_in_sorted_order(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    make_text_pdf(folder / "a.pdf", PAGES)
    make_scanned_pdf(folder / "b-scan.pdf")
    make_docx(folder / "c.docx", ["Hello.", "Привет."])
    make_binary(folder / "d.txt")
    (folder / "e.xlsx").write_bytes(b"PK")
    make_text(folder / "sub" / "f.md", "Nested.\n")
    make_empty(folder / "sub" / "g.vtt")
    make_text(folder / ".hidden.txt", "an editor's file")
    # The same file named on its own too is read once.
    results = list(read_documents([folder, folder / "a.pdf"]))
    summary = [(r.name, r.kind) for r in results]
    assert summary == [
        ("docs/a.pdf", "pdf"),
        ("docs/b-scan.pdf", "no_text_layer"),
        ("docs/c.docx", "docx"),
        ("docs/d.txt", "binary"),
        ("docs/e.xlsx", "unsupported"),
        ("docs/sub/f.md", "text"),
        ("docs/sub/g.vtt", "empty"),
    ]
    assert [type(r) for r in results].count(Document) == 3


def test_a_missing_path_stops_before_anything_is_read(tmp_path):
    make_text(tmp_path / "here.txt", "Present.\n")
    with pytest.raises(FtwError, match=r"no such file or folder: gone\.pdf"):
        next(read_documents([tmp_path / "here.txt", tmp_path / "gone.pdf"]))


def test_reading_documents_loads_no_document_library_until_a_document_is_read():
    probe = (
        "import sys, wrapper.data.documents; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pypdf', 'docx', 'bs4')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, encoding="utf-8"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not REAL_PDF.is_file(), reason=f"{REAL_PDF} is not here")
def test_a_real_pdf_reads_page_by_page():
    doc = read_one(REAL_PDF)
    assert isinstance(doc, Document), doc
    assert len(doc.passages) == 17 and [place for place, _ in doc.passages] == list(range(1, 18))
    assert doc.passages[0][1].startswith("Shared MIME-info Database")
    assert "This is version 0.21 of the Shared MIME-info Database specification" in doc.passages[0][1]
    assert all(len(text) > 200 for _, text in doc.passages[:-1])
    assert doc.where(3).endswith("shared-mime-info-spec.pdf:3")
