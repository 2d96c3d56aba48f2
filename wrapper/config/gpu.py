"""The GPUs of this machine: PROFILE=auto picks the profile of their memory class, and training
checks their free memory before it starts."""

from __future__ import annotations

import os
import shutil
import subprocess

from wrapper.config.profiles import load_profile, shipped_profiles

GIB = 1024**3


def detect_profile() -> tuple[str, str]:
    """The profile of this machine's GPUs, and how it was chosen (a line for PROFILE=auto to show)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", "auto: no CUDA GPU found -> profile [bold]cpu[/bold]"
    count = torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    memory = props.total_memory / GIB
    # Cards report a little less than their label (an "8 GB" card: ~7.8 GiB usable to CUDA).
    candidates = [load_profile(name) for name in shipped_profiles()]
    fitting = [p for p in candidates if p.device == "cuda" and 0 < p.memory_gb <= memory * 1.05]
    if not fitting:
        generic = "cuda" if count == 1 else f"cudax{count}"
        return generic, (
            f"auto: {props.name} ({memory:.1f} GiB) is smaller than every GPU profile -> generic [bold]cuda[/bold]"
        )
    best = max(fitting, key=lambda p: p.memory_gb)
    name = best.name if count == 1 else f"{best.name}x{count}"
    return name, f"auto: detected {count} x {props.name} ({memory:.1f} GiB) -> profile [bold]{name}[/bold]"


def free_vram_gib() -> list[tuple[float, float]] | None:
    """(free, total) GiB of each GPU this process may use, from nvidia-smi; None where there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            encoding="utf-8",
        ).stdout
        gpus = [
            (float(free) / 1024, float(total) / 1024)
            for free, total in (line.split(",") for line in out.splitlines() if line.strip())
        ]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible and all(part.strip().isdigit() for part in visible.split(",")):
        gpus = [gpus[int(index)] for index in visible.split(",") if int(index) < len(gpus)]
    return gpus
