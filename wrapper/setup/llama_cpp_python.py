"""`ftw setup`: llama-cpp-python's library must generate on this machine, or everything that answers from a
GGUF (smoke, eval, chat, the tests) dies with the process.

It is compiled from source with -march=native. On a CPU with AMX, ggml's AMX kernels were seen to stop the
process with a general protection fault (wrapper/core/cpu.py); pip's wheel cache would then hand the same
broken build to every new virtual environment. So after installing, one token is generated in a child
process; if that child dies, the cached wheel is dropped and the library is built again without the
kernels the CPU can't run, then checked again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from wrapper.core.cpu import native_build_cflags
from wrapper.core.errors import FtwError
from wrapper.setup.demo_model import shipped_gguf
from wrapper.setup.llama_cpp import LLAMA_CPP_PYTHON_VERSION

GENERATE_ONE_TOKEN = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
# a prompt of many tokens: its batch goes through the matrix kernels that one token alone would not reach
llm("The guards of the Amber Gate of Veloria carry swords of moon steel, and their captain is", max_tokens=2)
"""


def generates() -> tuple[bool, str]:
    """(True, "") when llama-cpp-python generates here; else (False, how the child ended)."""
    result = subprocess.run(
        [sys.executable, "-c", GENERATE_ONE_TOKEN, str(shipped_gguf())],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
    )
    if result.returncode == 0:
        return True, ""
    if result.returncode < 0:
        return False, f"killed by {signal.Signals(-result.returncode).name}"
    last = result.stderr.strip().splitlines()[-1:]
    return False, f"exit {result.returncode}" + (f": {last[0]}" if last else "")


def rebuild(cflags: tuple[str, ...]) -> None:
    flags = " ".join(cflags)
    env = dict(os.environ)
    for name in ("CFLAGS", "CXXFLAGS"):
        env[name] = f"{env.get(name, '')} {flags}".strip()
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "cache", "remove", "llama_cpp_python"], capture_output=True, check=False)
    package = f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON_VERSION}"
    subprocess.run([*pip, "install", "--quiet", "--force-reinstall", "--no-deps", package], env=env, check=True)


def main() -> None:
    ok, how = generates()
    if ok:
        return
    cflags = native_build_cflags()
    if not cflags:
        raise FtwError(
            f"llama-cpp-python can't generate on this machine ({how}). Reinstall it from source: .venv/bin/pip "
            f"install --no-cache-dir --force-reinstall --no-deps llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
        )
    print(
        f"llama-cpp-python's build can't generate on this CPU ({how}); building it again with {' '.join(cflags)} "
        "(several minutes, once)",
        flush=True,
    )
    rebuild(cflags)
    ok, how = generates()
    if not ok:
        raise FtwError(f"llama-cpp-python still can't generate on this machine after the rebuild ({how})")
    print("llama-cpp-python rebuilt and generating", flush=True)


if __name__ == "__main__":
    try:
        main()
    except FtwError as error:
        raise SystemExit(str(error)) from None
