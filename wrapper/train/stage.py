"""Train stage: `llamafactory-cli train` on the rendered YAML, with progress and resume.

A resumable stage of the contract (wrapper/core/stage.py): LLaMA-Factory resumes by
itself from the newest checkpoint-* in output_dir; what is left to us is to not start
over a finished run, to refuse a resume whose settings or data changed (they are recorded
when training starts), to drop a checkpoint cut off while saving, to check free disk and
VRAM before starting, and to show steps, loss and ETA from the trainer_log.jsonl it writes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from wrapper.config.gpu import free_vram_gib
from wrapper.config.models import model_config
from wrapper.config.planner import ModelShape
from wrapper.core import artifacts, manifest, stage
from wrapper.core.cpu import cpu_jobs
from wrapper.core.disk import check_free_space, folder_bytes
from wrapper.core.errors import FtwError
from wrapper.core.plan import RunPlan
from wrapper.core.procs import run_logged
from wrapper.core.ui import stage_progress, step
from wrapper.train import base_dtype

FINISHED_MARKER = "train_results.json"  # written by LLaMA-Factory after the final save
CHECKPOINT_STATE = "trainer_state.json"  # the last file transformers writes into a checkpoint
# Keys that change how a run is logged and saved, not what it learns, or that only say where the
# run's folder is (moving the runs folder is no change): a resume may change them.
RESUME_SAFE_KEYS = {
    "output_dir",
    "dataset_dir",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "plot_loss",
    "report_to",
    "run_name",
    "overwrite_output_dir",
    "overwrite_cache",
    "dataloader_num_workers",
    "preprocessing_num_workers",
    "ddp_timeout",
}


def is_finished(adapter_dir: Path) -> bool:
    return (adapter_dir / FINISHED_MARKER).is_file()


def checkpoints(adapter_dir: Path) -> list[Path]:
    found = [p for p in adapter_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / CHECKPOINT_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def drop_incomplete_checkpoints(adapter_dir: Path) -> list[Path]:
    """Remove the newest checkpoints if a stop cut their saving short, so the resume starts from a whole one."""
    found = checkpoints(adapter_dir)
    while found and not is_complete(found[-1]):
        broken = found.pop()
        shutil.rmtree(broken)
        step(f"removed {broken.name}: its saving was interrupted ({CHECKPOINT_STATE} missing or cut off)")
    return found


class TrainerLogWatcher:
    """Feeds a rich progress bar from LLaMA-Factory's trainer_log.jsonl."""

    def __init__(self, log_file: Path, progress, task):
        self.log_file = log_file
        self.progress = progress
        self.task = task
        self.offset = 0
        self.last: dict = {}
        self.last_loss: float | None = None

    def __call__(self) -> None:
        if not self.log_file.is_file():
            return
        with self.log_file.open("r", encoding="utf-8") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "current_steps" in entry:
                self.last = entry
                self.last_loss = entry.get("loss", self.last_loss)
        if self.last:
            loss = self.last_loss
            status = f"loss {loss:.4f}  ETA {self.last.get('remaining_time', '?')}" if loss is not None else ""
            self.progress.update(
                self.task, total=self.last.get("total_steps"), completed=self.last["current_steps"], status=status
            )


def launch_env(processes: int, on_cpu: bool = False) -> dict[str, str]:
    """Several GPUs (or CPU processes) go through LLaMA-Factory's own torchrun launcher, which picks a
    free MASTER_PORT itself. Several machines: the user exports NNODES, NODE_RANK, MASTER_ADDR and
    MASTER_PORT, which the child inherits."""
    if processes <= 1:
        return {}
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(processes)}
    return {**env, **cpu_processes_env(processes)} if on_cpu else env


def cpu_processes_env(processes: int) -> dict[str, str]:
    """CPU processes stay off any GPU: LLaMA-Factory places the model on cuda:LOCAL_RANK whenever CUDA is
    visible, whatever the profile. Their device is plain `cpu`: accelerate would name it `cpu:0`, and
    transformers resumes several processes with torch.load(map_location=that device), which can't restore
    to `cpu:0`. torchrun gives each process 1 thread; share the cores instead."""
    env = {"CUDA_VISIBLE_DEVICES": "", "ACCELERATE_TORCH_DEVICE": "cpu"}
    if "OMP_NUM_THREADS" not in os.environ:  # the user's choice wins
        env["OMP_NUM_THREADS"] = str(max(1, cpu_jobs() // processes))
    return env


def train_needs(plan: RunPlan, existing_bytes: int = 0) -> dict[str, int]:
    """Checkpoints (weights + optimizer states of the trainable parameters) and the final adapter; {} when the
    base's shape is unknown here."""
    try:
        shape = ModelShape.from_config(model_config(plan.base_model))
    except (FtwError, OSError, KeyError, ValueError):
        return {}
    args = plan.train_args
    trainable = shape.params if plan.method == "full" else shape.lora_params(int(args.get("lora_rank", 8)))
    optimizer_bytes = 2 if "8bit" in str(args.get("optim", "")) else 8  # AdamW: two fp32 states per parameter
    kept = int(args.get("save_total_limit") or 3) + 1  # the newest is written before the oldest is deleted
    checkpoints_bytes = max(0, trainable * (4 + optimizer_bytes) * kept - existing_bytes)
    return {f"{kept} checkpoints": checkpoints_bytes, "final adapter": trainable * 4}


HOST_RAM_HEADROOM_GIB = 4.0  # the trainer's own process: Python, CUDA's host side, the data loader


def check_vram(plan: RunPlan, ignore_fit: bool) -> None:
    """On a GPU: free memory now (other programs hold some) against the planner's peak."""
    if not plan.fit or ignore_fit:
        return
    gpus = free_vram_gib()
    if not gpus:
        return
    need = float(plan.fit["peak_vram_gb"])
    for index, (free, total) in enumerate(gpus[: plan.gpus]):
        if free < need:
            raise FtwError(
                f"GPU {index} has {free:.1f} GiB free of {total:.1f} GiB ({total - free:.1f} GiB held by other "
                f"programs), and the plan for {plan.profile} needs about {need:.1f} GiB "
                "(ftw plan shows the breakdown). "
                f"Close what holds it (nvidia-smi lists them), choose a smaller profile, or start anyway with "
                f"ftw train --run {plan.run} --ignore-fit."
            )


def available_ram_gib() -> float | None:
    """MemAvailable from /proc/meminfo (Linux); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_host_ram(plan: RunPlan, ignore_fit: bool) -> None:
    """Offloaded checkpoints wait in host RAM: short of it, the kernel's OOM killer ends the run mid-step."""
    need = float((plan.fit or {}).get("host_ram_gb") or 0)
    available = available_ram_gib()
    if ignore_fit or need <= 0 or available is None:
        return
    if available < need + HOST_RAM_HEADROOM_GIB:
        raise FtwError(
            f"the plan for {plan.profile} keeps ~{need:.1f} GiB of checkpointed activations in host RAM "
            f"(use_unsloth_gc), plus ~{HOST_RAM_HEADROOM_GIB:g} GiB for the trainer itself, and this machine "
            f"has {available:.1f} GiB available. Close programs, render with a shorter cutoff_len "
            f"(ftw plan --recipe {plan.recipe} --max-context), or start anyway with "
            f"ftw train --run {plan.run} --ignore-fit."
        )


def preflight(plan: RunPlan, resumable: list[Path], ignore_fit: bool) -> None:
    existing = sum(folder_bytes(checkpoint) for checkpoint in resumable)
    needs = train_needs(plan, existing)
    if needs:
        check_free_space(plan.adapter_dir.parent, needs, "ftw train (checkpoints and the adapter)")
    check_vram(plan, ignore_fit)
    check_host_ram(plan, ignore_fit)


class TrainStage:
    title = "adapter"
    force_says = "trains again from the start"

    def __init__(self, run_dir: Path, ignore_fit: bool = False):
        self.plan = manifest.plan_of(run_dir)
        self.run_dir, self.key, self.target = run_dir, artifacts.ADAPTER, self.plan.adapter_dir
        self.ignore_fit = ignore_fit
        self.log_path = run_dir / "logs" / "train.log"
        self.logs = {artifacts.TRAIN_LOG: self.log_path}
        self.steps: dict = {}

    def inputs(self) -> stage.StageInputs:
        """The settings and data a run trains on; a resume must use the same."""
        args = dict(self.plan.train_args)
        if base_dtype.folder_in_use(self.plan):
            # the folder in the run's compute dtype says where the run is, not what it trains: its base does
            args["model_name_or_path"] = self.plan.base_model
        values = {
            f"train.yaml {key}": stage.short_value(value) for key, value in args.items() if key not in RESUME_SAFE_KEYS
        }
        if self.plan.compute_dtype:
            values["compute dtype"] = self.plan.compute_dtype
        for dataset in self.plan.datasets:
            values[f"data {Path(dataset['path']).name}"] = "sha256 " + dataset["sha256"][:16]
        return stage.StageInputs(self.key, values)

    def is_finished(self) -> bool:
        return is_finished(self.target)

    def has_work(self) -> bool:
        return bool(checkpoints(self.target))

    def refusal(self, changes: list[str]) -> FtwError:
        run = self.run_dir.name
        return stage.changed_inputs_refused(
            f"run {run} was {'trained' if self.is_finished() else 'started'}",
            changes,
            f"To keep the earlier run, render the new settings into a new run (--run NEW_NAME). To train this run "
            f"again from the start: ftw train --run {run} --force (make train ... RETRAIN=1).",
        )

    def make(self, adapter_dir: Path) -> None:
        resumable = drop_incomplete_checkpoints(adapter_dir)
        if adapter_dir.exists() and not resumable:
            # Killed before its first checkpoint: nothing to resume, and LLaMA-Factory refuses a non-empty folder.
            shutil.rmtree(adapter_dir)
        if resumable:
            step(f"Resuming from {resumable[-1].name} (LLaMA-Factory picks the newest checkpoint).")
        preflight(self.plan, resumable, self.ignore_fit)
        base_dtype.ensure(self.plan)
        step(
            f"Training [bold]{self.plan.run}[/bold]: {self.plan.recipe} on {self.plan.profile}"
            + (f", computed in {self.plan.compute_dtype}" if self.plan.compute_dtype else "")
            + f"; full log: {self.log_path}"
        )
        with stage_progress() as progress:
            task = progress.add_task("train", total=None, status="loading model and data")
            watcher = TrainerLogWatcher(adapter_dir / "trainer_log.jsonl", progress, task)
            run_logged(
                ["llamafactory-cli", "train", str(self.run_dir / "train.yaml")],
                self.log_path,
                "llamafactory-cli train",
                env=launch_env(self.plan.gpus, on_cpu=self.plan.device == "cpu"),
                poll=watcher,
                writes_to=adapter_dir,
            )
        self.steps = {"steps": watcher.last.get("current_steps", "?"), "loss": watcher.last_loss}

    def verify(self, adapter_dir: Path) -> str:
        if not is_finished(adapter_dir):
            raise FtwError(
                f"llamafactory-cli train exited without writing {adapter_dir / FINISHED_MARKER}; see {self.log_path}"
            )
        loss = self.steps.get("loss")
        return f"{self.steps.get('steps', '?')} steps" + (f", final loss {loss:.4f}" if loss is not None else "")


def train(run_dir: Path, force: bool = False, ignore_fit: bool = False) -> Path:
    return stage.run_resumable(TrainStage(run_dir, ignore_fit), force)
