"""What this machine's CPU offers: the cores this process may use, and bfloat16, as the CPU itself reports it.

PyTorch computes bfloat16 (and float16) matmuls on a CPU quickly only where the CPU has
instructions for them (AVX512-BF16, AMX-BF16); elsewhere it falls back to a reference gemm
that runs 30x or more slower than float32 (bench/README.md has the figures). So a model that
runs on a CPU is computed in float32 unless the CPU reports one of these.

The answer comes from what the CPU reports, not from a timed matmul: it is the same on every
call, costs nothing, and a test can set it either way (`FAST_BF16_ENV`).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# x86 instructions PyTorch's CPU kernels (oneDNN) use for fast bfloat16 matmuls.
FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
# "1" or "0": what the detection answers, whatever the CPU (tests and benchmarks set it).
FAST_BF16_ENV = "FTW_CPU_FAST_BF16"


def cpu_jobs() -> int:
    """The cores this process may run on (a container's or taskset's limit), not all the machine has: every
    thread count ftw gives llama.cpp, PyTorch processes and builds comes from here."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Bf16Support:
    fast: bool
    evidence: str  # what was read, for the run's plan and `ftw plan`


def cpu_flags(cpuinfo: Path | None = None) -> set[str] | None:
    """The flags of the first processor in /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        text = (cpuinfo or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):  # x86 says flags, Arm says Features
            return set(value.split())
    return set()


def _torch_reports_fast_bf16() -> bool | None:
    """PyTorch's own cpuinfo check, for systems without /proc/cpuinfo (Windows, macOS on Intel)."""
    try:
        import torch

        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        found = [check() for check in checks if check is not None]
    except Exception:  # an older or unusual torch: say nothing rather than guess
        return None
    return any(found) if found else None


def bf16_support() -> Bf16Support:
    forced = os.environ.get(FAST_BF16_ENV)
    if forced in ("0", "1"):
        return Bf16Support(forced == "1", f"{FAST_BF16_ENV}={forced}")
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        # Arm CPUs with BF16 exist, but whether PyTorch's kernels use it varies by build: float32 is the safe side.
        return Bf16Support(False, f"{machine or 'this'} CPU: fast bfloat16 is only trusted on x86 with {_flag_words()}")
    flags = cpu_flags()
    if flags is not None:
        present = [flag for flag in FAST_BF16_FLAGS if flag in flags]
        if present:
            return Bf16Support(True, f"{', '.join(present)} in {CPUINFO}")
        return Bf16Support(False, f"no {_flag_words()} in {CPUINFO}")
    reported = _torch_reports_fast_bf16()
    if reported is None:
        return Bf16Support(False, f"{sys.platform}: the CPU's bfloat16 support is unknown")
    return Bf16Support(reported, f"PyTorch's CPU check: {_flag_words()} {'present' if reported else 'absent'}")


def _flag_words() -> str:
    return " or ".join(FAST_BF16_FLAGS)


# ggml's AMX kernels, compiled in wherever -march=native finds AMX, stopped llama.cpp with a general protection
# fault (ldtilecfg in ggml_backend_amx_mul_mat, llama.cpp 0c1e570) on a Xeon whose AMX works for a plain program.
# Builds here leave them out on such CPUs: the AVX-512 kernels (VNNI, BF16) stay.
NO_AMX_FLAGS = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")


def native_build_cflags() -> tuple[str, ...]:
    """C/C++ flags for llama.cpp built with -march=native on this machine (GCC or Clang; MSVC takes none)."""
    if sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    return NO_AMX_FLAGS if "amx_tile" in (cpu_flags() or set()) else ()


if __name__ == "__main__":  # the Makefile's C/C++ flags for compiling llama-cpp-python here
    print(" ".join(native_build_cflags()))
