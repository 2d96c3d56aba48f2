"""`ftw setup`: unpack llama.cpp from the pinned llama-cpp-python sdist.

A git submodule can't be cloned here (only package registries are reachable), but
the llama-cpp-python sdist carries the complete llama.cpp tree of the exact commit its
library is compiled from. Converting with that tree's convert_hf_to_gguf.py and its own
gguf-py keeps converter, quantizer and runtime on one llama.cpp version.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from wrapper.core.fsutil import staged_dir, write_text_exact
from wrapper.core.paths import LLAMA_CPP_COMMIT_FILE, LLAMA_CPP_DIR, PROJECT_ROOT, llama_cpp_commit

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_CACHE = PROJECT_ROOT / ".cache" / "sdist"


def download_sdist(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not (dest / name).is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
                "-d",
                str(dest),
            ],
            check=True,
        )
    return dest / name


def unpack_llama_cpp(sdist: Path, target: Path) -> str:
    """Extract vendor/llama.cpp from the sdist into target; return the llama.cpp commit."""
    top = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    tree_prefix = f"{top}/vendor/llama.cpp/"
    head_member = f"{top}/.git/modules/vendor/llama.cpp/HEAD"
    with staged_dir(target) as staging, tarfile.open(sdist) as archive:
        commit = archive.extractfile(head_member).read().decode().strip()
        members = []
        for member in archive.getmembers():
            if member.name.startswith(tree_prefix):
                member.name = member.name[len(tree_prefix) :]
                members.append(member)
        archive.extractall(staging, members=members, filter="data")
        write_text_exact(
            staging / LLAMA_CPP_COMMIT_FILE, f"{commit}\nfrom llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist\n"
        )
    return commit


def ensure_llama_cpp() -> str | None:
    """Unpack llama.cpp unless it is there; return the commit when it was unpacked now."""
    if llama_cpp_commit() and (LLAMA_CPP_DIR / "convert_hf_to_gguf.py").is_file():
        return None
    return unpack_llama_cpp(download_sdist(SDIST_CACHE), LLAMA_CPP_DIR)


if __name__ == "__main__":
    unpacked = ensure_llama_cpp()
    if unpacked:
        print(f"vendor/llama.cpp unpacked at commit {unpacked}")
