"""Reading GGUF files back: a file verified once in a process is not parsed again, a changed one is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wrapper.core import gguf_io
from wrapper.core.errors import FtwError


def write_gguf(path: Path, file_type: int, tensors: int) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_file_type(file_type)
    for index in range(tensors):
        writer.add_tensor(f"t{index}", np.zeros(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """The paths the gguf library was asked to parse."""
    parsed: list[Path] = []
    real = gguf_io.read_gguf

    def counting(path: Path):
        parsed.append(path)
        return real(path)

    monkeypatch.setattr(gguf_io, "read_gguf", counting)
    monkeypatch.setattr(gguf_io, "_VERIFIED", {})
    return parsed


def test_a_verified_file_is_parsed_once_even_after_a_rename(tmp_path, reads):
    partial = write_gguf(tmp_path / "m.gguf.partial", gguf_io.ftype_of("f16"), tensors=3)
    assert gguf_io.verify_gguf(partial, gguf_io.ftype_of("f16")) == 3
    final = partial.rename(tmp_path / "m.gguf")
    assert gguf_io.verify_gguf(final, gguf_io.ftype_of("f16")) == 3
    assert reads == [partial]


def test_a_rewritten_file_is_parsed_again_and_a_wrong_type_still_refused(tmp_path, reads):
    path = write_gguf(tmp_path / "m.gguf", gguf_io.ftype_of("f16"), tensors=2)
    gguf_io.verify_gguf(path, gguf_io.ftype_of("f16"))
    write_gguf(path, gguf_io.ftype_of("Q8_0"), tensors=4)
    with pytest.raises(FtwError, match="general.file_type is 7, expected 1"):
        gguf_io.verify_gguf(path, gguf_io.ftype_of("f16"))
    assert gguf_io.verify_gguf(path, gguf_io.ftype_of("Q8_0")) == 4
    assert len(reads) == 3
