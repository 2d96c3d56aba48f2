"""Several training processes of one run (a profile NAMExN): N GPUs, or N processes on the CPU.

The planner spreads the batch over the GPUs of a profile with a memory class. A profile
without one (`cpu`, the generic `cuda`) has no plan, but its processes must keep the
recipe's effective batch all the same; CPU processes also need gloo, since NCCL is GPU only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from wrapper.config.schema import Profile

CPU_BACKEND = "gloo"  # torch.distributed's CPU backend; NCCL only moves GPU tensors
ORIGIN = "profile {}: {} processes (wrapper/config/processes.py)"


def spread_batch(micro: int, accum: int, processes: int, keep_micro: bool = False) -> tuple[int, int]:
    """(micro-batch, accumulation) of each process for the recipe's effective batch micro x accum, rounded as the
    planner rounds: the micro-batch at most one process's share (unless kept), accumulation rounded up."""
    effective = micro * accum
    if not keep_micro:
        micro = min(micro, max(1, effective // processes))
    return micro, max(1, math.ceil(effective / (micro * processes)))


def process_args(args: dict[str, Any], profile: Profile, pinned: set[str]) -> dict[str, Any]:
    """The train keys a profile without a memory plan needs for its processes; keys set by --set are kept."""
    micro, accum = spread_batch(
        int(args.get("per_device_train_batch_size", 1)),
        int(args.get("gradient_accumulation_steps", 1)),
        profile.gpus,
        keep_micro="per_device_train_batch_size" in pinned,
    )
    chosen: dict[str, Any] = {"per_device_train_batch_size": micro, "gradient_accumulation_steps": accum}
    if profile.device == "cpu":
        chosen["ddp_backend"] = CPU_BACKEND
    return {key: value for key, value in chosen.items() if key not in pinned}


def apply_process_args(
    args: dict[str, Any], origins: dict[str, str], profile: Profile, overrides: Iterable[str]
) -> None:
    """process_args into a run's arguments, each with its origin; `overrides`: the recipe's --set keys."""
    pinned = {key.removeprefix("train.") for key in overrides if key.startswith("train.")}
    for key, value in process_args(args, profile, pinned).items():
        args[key] = value
        origins[key] = ORIGIN.format(profile.name, profile.gpus)
