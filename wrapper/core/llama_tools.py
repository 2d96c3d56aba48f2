"""llama.cpp's own programs (llama-quantize, llama-imatrix, llama-perplexity, llama-server), built
with CMake from the vendored tree, only those targets, into vendor/llama.cpp/build.

Built by `ftw tools`, or on first use. A stamp beside the binaries records the llama.cpp commit
and the CMake flags they were built from; a change of either rebuilds (incrementally). A failed
build is remembered too, so that the next command doesn't spend minutes failing again: it says
so and names the log; `ftw tools` tries again. Nothing else in the pipeline needs these
programs: quantizing without an importance matrix goes through llama-cpp-python's own library.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from wrapper.core.cpu import cpu_jobs, native_build_cflags
from wrapper.core.errors import FtwError, StageError
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.paths import LLAMA_CPP_DIR, llama_cpp_commit
from wrapper.core.platform import exe_name, is_windows, msvc_found
from wrapper.core.procs import last_lines, run_logged
from wrapper.core.ui import done, stage_progress, step

TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-server")
BUILD_DIR_NAME = "build"
STAMP_NAME = "ftw-tools.json"
LOG_NAME = "ftw-build.log"

# Only what the four programs need: no tests, examples, web UI download, HTTPS or unified app.
BASE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DGGML_CCACHE=OFF",
)
INSTALL_HINT = {
    "cmake": "install CMake (Debian/Ubuntu: sudo apt install cmake; macOS: brew install cmake; or pip install cmake)",
    "compiler": "install a C++ compiler (Debian/Ubuntu: sudo apt install build-essential; "
    "macOS: xcode-select --install)",
}
WINDOWS_INSTALL_HINT = {
    "cmake": "install CMake (winget install Kitware.CMake, or pip install cmake)",
    "compiler": 'install Visual Studio 2022 Build Tools with the "Desktop development with C++" workload '
    '(winget install Microsoft.VisualStudio.2022.BuildTools --override "--passive --wait '
    '--add Microsoft.VisualStudio.Workload.VCTools --includeRecommended")',
}
CUDA_FLAGS = ("-DGGML_CUDA=ON",)
CUDA_HINT = "install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads) with its bin/ on PATH"
CUDA_HINT_WINDOWS = (
    "install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads) after Visual Studio's Build Tools, "
    "with its Visual Studio integration (the installer's default; CMake's Visual Studio generator builds CUDA "
    "through it), and open a new terminal so that nvcc is on PATH"
)
# Where the programs land: bin/ with a single-configuration generator (Makefiles, Ninja), bin/Release/
# with a multi-configuration one (Visual Studio's, the default on Windows; Ninja Multi-Config).
BIN_DIRS = (Path("bin"), Path("bin") / "Release")
# How far a build is: Makefiles print `[ 42%] Building ...`, Ninja `[12/345] Building ...`; MSBuild (Visual
# Studio's generator) prints no count at all.
PERCENT = re.compile(r"^\[\s*(\d+)%\]")
STEPS = re.compile(r"^\[(\d+)/(\d+)\]")
STATUS_CHARS = 50


class ToolsUnavailable(FtwError):
    """llama.cpp's programs can't be built here; what needs them says what still works without."""


@dataclass(frozen=True)
class BuildSpec:
    commit: str
    flags: tuple[str, ...]
    targets: tuple[str, ...] = TOOLS


def build_dir(llama_cpp_dir: Path = LLAMA_CPP_DIR) -> Path:
    return llama_cpp_dir / BUILD_DIR_NAME


def build_log(llama_cpp_dir: Path = LLAMA_CPP_DIR) -> Path:
    return build_dir(llama_cpp_dir) / LOG_NAME


def binary(name: str, llama_cpp_dir: Path = LLAMA_CPP_DIR) -> Path:
    """The program where the build put it; where a single-configuration build would, before one exists."""
    candidates = [build_dir(llama_cpp_dir) / folder / exe_name(name) for folder in BIN_DIRS]
    return next((path for path in candidates if path.is_file()), candidates[0])


def accelerator_flags() -> tuple[str, ...]:
    """CUDA where its compiler and a GPU are both here; Metal is llama.cpp's own default on Apple silicon."""
    return CUDA_FLAGS if shutil.which("nvcc") and nvidia_gpu_present() else ()


def nvidia_gpu_present() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False, encoding="utf-8")
    return probe.returncode == 0 and bool(probe.stdout.strip())


def cpu_only_note(flags: tuple[str, ...]) -> str | None:
    """One line where a build for the CPU leaves an NVIDIA GPU unused because CUDA's compiler is missing."""
    if set(CUDA_FLAGS) <= set(flags) or shutil.which("nvcc") or not nvidia_gpu_present():
        return None
    return (
        "note: an NVIDIA GPU is here but not nvcc, CUDA's compiler, so llama.cpp's tools are built for the CPU "
        f"only; for the GPU, {CUDA_HINT_WINDOWS if is_windows() else CUDA_HINT}, then: ftw tools"
    )


def wanted_spec(llama_cpp_dir: Path = LLAMA_CPP_DIR) -> BuildSpec:
    commit = llama_cpp_commit(llama_cpp_dir)
    if not commit:
        raise ToolsUnavailable("vendor/llama.cpp is not unpacked yet; run: ftw setup")
    return BuildSpec(commit, BASE_FLAGS + accelerator_flags() + cpu_flags_args())


def cpu_flags_args() -> tuple[str, ...]:
    """-march=native without the kernels that crash on this CPU (wrapper/core/cpu.py)."""
    flags = " ".join(native_build_cflags())
    return (f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}") if flags else ()


def read_stamp(llama_cpp_dir: Path = LLAMA_CPP_DIR) -> dict:
    path = build_dir(llama_cpp_dir) / STAMP_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_stamp(spec: BuildSpec, status: str, llama_cpp_dir: Path = LLAMA_CPP_DIR, **extra) -> None:
    body = {**asdict(spec), "status": status, **extra}
    write_text_atomic(build_dir(llama_cpp_dir) / STAMP_NAME, json.dumps(body, indent=2) + "\n")


def is_built(spec: BuildSpec, llama_cpp_dir: Path = LLAMA_CPP_DIR) -> bool:
    stamp = read_stamp(llama_cpp_dir)
    same = stamp.get("commit") == spec.commit and tuple(stamp.get("flags", ())) == spec.flags
    return same and stamp.get("status") == "built" and all(binary(t, llama_cpp_dir).is_file() for t in spec.targets)


def failed_before(spec: BuildSpec, llama_cpp_dir: Path = LLAMA_CPP_DIR) -> bool:
    stamp = read_stamp(llama_cpp_dir)
    same = stamp.get("commit") == spec.commit and tuple(stamp.get("flags", ())) == spec.flags
    return same and stamp.get("status") == "failed"


def missing_build_tools() -> list[str]:
    missing = [] if shutil.which("cmake") else ["cmake"]
    compilers = ("c++", "g++", "clang++") if not os.environ.get("CXX") else (os.environ["CXX"],)
    if not (any(shutil.which(name) for name in compilers) or msvc_found()):
        missing.append("compiler")
    return missing


def install_hints(missing: list[str]) -> str:
    hints = WINDOWS_INSTALL_HINT if is_windows() else INSTALL_HINT
    return "; ".join(hints[m] for m in missing)


def build(llama_cpp_dir: Path = LLAMA_CPP_DIR, force: bool = False) -> BuildSpec:
    """Configure and build the four programs unless built from this commit with these flags."""
    spec = wanted_spec(llama_cpp_dir)
    if not force and is_built(spec, llama_cpp_dir):
        return spec
    missing = missing_build_tools()
    if missing:
        raise ToolsUnavailable(
            f"llama.cpp's programs need {' and '.join(missing)} to build: {install_hints(missing)}. Then: ftw tools"
        )
    note = cpu_only_note(spec.flags)
    if note:
        step(note)
    out = build_dir(llama_cpp_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = build_log(llama_cpp_dir)
    log.write_bytes(b"")
    step(
        f"Building llama.cpp's {', '.join(spec.targets)} ({platform.machine()}, {cpu_jobs()} jobs; "
        f"a few minutes, once per llama.cpp commit); full log: {log}"
    )
    write_stamp(spec, "building", llama_cpp_dir)
    try:
        run_logged(["cmake", "-S", str(llama_cpp_dir), "-B", str(out), *spec.flags], log, "cmake configure")
        compile_with_progress(spec, out, log)
    except StageError as error:
        write_stamp(spec, "failed", llama_cpp_dir, log=str(log))
        raise ToolsUnavailable(build_failed_message(log)) from error
    write_stamp(spec, "built", llama_cpp_dir)
    done(f"built {', '.join(spec.targets)} in {binary(spec.targets[0], llama_cpp_dir).parent}")
    return spec


def compile_with_progress(spec: BuildSpec, out: Path, log: Path) -> None:
    argv = ["cmake", "--build", str(out), "--config", "Release", "-j", str(cpu_jobs())]
    argv += [arg for target in spec.targets for arg in ("--target", target)]
    with stage_progress() as progress:
        task = progress.add_task("build llama.cpp tools", total=100, status="")

        def show_progress() -> None:
            percent, status = build_status(last_lines(log, 5))
            progress.update(task, completed=percent, status=status)  # None: the bar stays where it is

        run_logged(argv, log, "building llama.cpp's tools", poll=show_progress, writes_to=out)
        progress.update(task, completed=100)


def build_progress(line: str) -> tuple[int, str] | None:
    """(percent done, what is being built) from one line of the build's output, or None where it holds no count."""
    percent = PERCENT.match(line)
    if percent:
        return int(percent.group(1)), line[percent.end() :].strip()
    steps = STEPS.match(line)
    if steps and int(steps.group(2)):
        return 100 * int(steps.group(1)) // int(steps.group(2)), line[steps.end() :].strip()
    return None


def build_status(lines: list[str]) -> tuple[int | None, str]:
    """The build's progress from its latest lines: the newest count and what it builds; without a count
    (MSBuild) no percentage and the latest line, so that the status still moves."""
    for line in reversed(lines):
        found = build_progress(line)
        if found:
            return found[0], found[1][-STATUS_CHARS:]
    return None, (lines[-1].strip()[-STATUS_CHARS:] if lines else "")


def build_failed_message(log: Path) -> str:
    tail = "\n  ".join(last_lines(log, 8))
    return (
        f"llama.cpp's tools did not build; the log: {log}\n  {tail}\n"
        "Everything else still works without them (ftw gguf quantizes with llama-cpp-python's library, "
        "without an importance matrix). Fix the cause, then: ftw tools"
    )


def tool(name: str, llama_cpp_dir: Path = LLAMA_CPP_DIR) -> Path:
    """The path of one of llama.cpp's programs, building them first where needed. A build that failed
    for this same commit and flags isn't tried again here (it takes minutes): `ftw tools` does."""
    if name not in TOOLS:
        raise ValueError(f"{name} is not one of {TOOLS}")
    spec = wanted_spec(llama_cpp_dir)
    if is_built(spec, llama_cpp_dir):
        return binary(name, llama_cpp_dir)
    if failed_before(spec, llama_cpp_dir):
        raise ToolsUnavailable(build_failed_message(build_log(llama_cpp_dir)))
    build(llama_cpp_dir)
    return binary(name, llama_cpp_dir)


def built_tool(name: str, llama_cpp_dir: Path = LLAMA_CPP_DIR) -> Path | None:
    """The program if it is built and current, without building: for what is optional (eval's KLD)."""
    try:
        spec = wanted_spec(llama_cpp_dir)
    except ToolsUnavailable:
        return None
    return binary(name, llama_cpp_dir) if is_built(spec, llama_cpp_dir) else None
