"""RunPlan: what `ftw render` resolved for a run, and what every later stage reads.

It is stored in runs/RUN/manifest.json under "plan"; stages load it with
`manifest.plan_of(run_dir)` and never re-read the recipe or the profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The trained LoRA's own files in runs/RUN/adapter (its checkpoints and logs are not the adapter).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass
class RunPlan:
    """Everything later stages need, resolved once."""

    run: str
    run_dir: str
    recipe: str
    recipe_file: str
    profile: str
    profile_file: str
    method: str
    template: str
    system: str | None
    base_model: str
    base_quantization: str | None
    merge_base: str
    merge_base_source: str
    datasets: list[dict]
    train_args: dict[str, Any]
    export_args: dict[str, Any]
    origins: dict[str, str]
    checks: list[dict] = field(default_factory=list)
    ollama_parameters: dict[str, Any] = field(default_factory=dict)
    gpus: int = 1  # training processes: GPUs, or processes on the CPU
    device: str = "cuda"  # the profile's: cuda or cpu
    # On a CPU: the dtype the base's weights are loaded and computed in, and why (wrapper/config/compute_dtype.py)
    compute_dtype: str | None = None
    compute_dtype_reason: str | None = None
    fit: dict | None = None  # the planner's verdict for a GPU profile
    skipped_checks: list[str] = field(default_factory=list)  # checks this machine can't run (LLaMA-Factory's, stops)
    end_of_turn: dict | None = None  # the token a sample answer ends with and trains on (wrapper/train/stops.py)
    prepared_data: dict | None = None  # runs/RUN/data from `ftw data prepare`, when the run uses it
    overrides: list[str] = field(default_factory=list)  # --set, so that a re-render keeps them
    # `ftw eval`'s settings (the recipe's eval: section with --set applied, its files as absolute paths):
    # eval reads these, never the recipe. None in a plan rendered before they were kept here.
    eval: dict[str, Any] | None = None

    @property
    def dir(self) -> Path:
        return Path(self.run_dir)

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.dir / "merged"

    @property
    def dequantized_base_dir(self) -> Path:
        return self.dir / "base-dequantized"

    @classmethod
    def from_dict(cls, data: dict) -> RunPlan:
        return cls(**data)
