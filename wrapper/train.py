"""Train stage: `llamafactory-cli train` on the rendered YAML, with progress and resume.

LLaMA-Factory resumes by itself from the newest checkpoint-* in output_dir; what is
left to us is to not start over a finished run, to clear a folder that holds nothing
resumable, and to show steps, loss and ETA from the trainer_log.jsonl it writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from wrapper import manifest
from wrapper.errors import FtwError
from wrapper.procs import run_logged
from wrapper.ui import console, done, stage_progress

FINISHED_MARKER = "train_results.json"  # written by LLaMA-Factory after the final save


def is_finished(adapter_dir: Path) -> bool:
    return (adapter_dir / FINISHED_MARKER).is_file()


def checkpoints(adapter_dir: Path) -> list[Path]:
    found = [p for p in adapter_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


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
            self.progress.update(self.task, total=self.last.get("total_steps"),
                                 completed=self.last["current_steps"], status=status)


def launch_env(gpus: int) -> dict[str, str]:
    """Several GPUs go through LLaMA-Factory's own torchrun launcher. Several machines: the
    user exports NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT, which the child inherits."""
    if gpus <= 1:
        return {}
    return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(gpus)}


def train(run_dir: Path, force: bool = False) -> Path:
    plan = manifest.plan_of(run_dir)
    adapter_dir = plan.adapter_dir
    log_path = run_dir / "logs" / "train.log"
    if force and adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    if is_finished(adapter_dir):
        manifest.record_artifacts(run_dir, adapter=adapter_dir, train_log=log_path)
        done(f"already trained: {adapter_dir} (use --force to train again)")
        return adapter_dir
    resumable = checkpoints(adapter_dir)
    if adapter_dir.exists() and not resumable:
        # Killed before its first checkpoint: nothing to resume, and LLaMA-Factory refuses a non-empty folder.
        shutil.rmtree(adapter_dir)
    if resumable:
        console.print(f"Resuming from {resumable[-1].name} (LLaMA-Factory picks the newest checkpoint).")
    manifest.forget_from(run_dir, "adapter")

    console.print(f"Training [bold]{plan.run}[/bold]: {plan.recipe} on {plan.profile}; full log: {log_path}")
    with stage_progress() as progress:
        task = progress.add_task("train", total=None, status="loading model and data")
        watcher = TrainerLogWatcher(adapter_dir / "trainer_log.jsonl", progress, task)
        run_logged(["llamafactory-cli", "train", str(run_dir / "train.yaml")], log_path,
                   "llamafactory-cli train", env=launch_env(plan.gpus), poll=watcher)
    if not is_finished(adapter_dir):
        raise FtwError(f"llamafactory-cli train exited without writing {adapter_dir / FINISHED_MARKER}; see {log_path}")
    manifest.record_artifacts(run_dir, adapter=adapter_dir, train_log=log_path)
    final_loss = watcher.last_loss
    done(f"trained {plan.run}: {watcher.last.get('current_steps', '?')} steps"
         + (f", final loss {final_loss:.4f}" if final_loss is not None else "") + f" -> {adapter_dir}")
    return adapter_dir
