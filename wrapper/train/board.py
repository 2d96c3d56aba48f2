"""`ftw board`: TensorBoard on the training curves of one or more runs, on this machine only.

Training writes TensorBoard's event files by default (`report_to: tensorboard`: transformers'
TensorBoardCallback writes into the run's adapter/runs/<start time>_<host>/, one folder per start
or resume). `ftw board --run A --run B` shows the runs side by side, each under its own name
(TensorBoard's --logdir_spec), while training goes on or after. TensorBoard reads the local files
and is bound to 127.0.0.1 unless told otherwise: nothing leaves the machine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wrapper.core import service
from wrapper.core.errors import FtwError
from wrapper.core.manifest import run_dir_of

DEFAULT_PORT = 6006  # TensorBoard's own
EVENTS = "events.out.tfevents.*"
LOG_NAME = "board.log"


@dataclass(frozen=True)
class Board:
    runs: tuple[str, ...]
    log_dirs: tuple[Path, ...]
    log: Path
    host: str = service.LOOPBACK
    port: int = DEFAULT_PORT

    def command(self, host: str, port: int) -> str:
        line = "ftw board " + " ".join(f"--run {run}" for run in self.runs)
        return line + (f" --host {host}" if host != service.LOOPBACK else "") + f" --port {port}"

    @property
    def address(self) -> service.Address:
        return service.Address(self.host, self.port, self.command)

    def argv(self) -> list[str]:
        spec = ",".join(f"{run}:{folder}" for run, folder in zip(self.runs, self.log_dirs, strict=True))
        argv = [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec]
        return argv + ["--host", self.host, "--port", str(self.port)]


def log_dir(run_dir: Path) -> Path:
    """The run's TensorBoard logs (its training output folder), or a message saying why there are none."""
    folder = run_dir / "adapter"
    if not any(folder.glob(f"runs/*/{EVENTS}")):
        raise FtwError(
            f"run {run_dir.name} has no TensorBoard logs in {folder / 'runs'}: it has not started training, or "
            f"was trained with report_to other than tensorboard. Its curves are in {folder / 'trainer_log.jsonl'}; "
            f"for TensorBoard, train with the default: ftw train --run {run_dir.name} --force"
        )
    return folder


def board_for(runs: tuple[str, ...], host: str, port: int) -> Board:
    if len(set(runs)) != len(runs):
        raise FtwError(f"--run: each run once ({', '.join(runs)})")
    run_dirs = [run_dir_of(run) for run in runs]
    folders = tuple(log_dir(run_dir) for run_dir in run_dirs)
    return Board(runs, folders, run_dirs[0] / "logs" / LOG_NAME, host, port)


def start(board: Board, timeout_s: float | None = None) -> service.Service:
    service.check_address(board.address)
    status = f"TensorBoard is reading {len(board.runs)} run(s) (log: {board.log})"
    # /data/logdir answers once TensorBoard serves; the runs appear as it reads them
    ready = f"{board.address.root}/data/logdir"
    return service.start("TensorBoard", board.argv(), board.log, ready, status, timeout_s)


def run_board(
    runs: tuple[str, ...],
    on_ready: Callable[[Board], None],
    host: str = service.LOOPBACK,
    port: int = DEFAULT_PORT,
) -> None:
    """Start TensorBoard on the runs, call `on_ready` once it answers, and wait for Ctrl-C."""
    board = board_for(runs, host, port)
    child = start(board)
    try:
        on_ready(board)
        service.wait(child)
    finally:
        child.stop()
