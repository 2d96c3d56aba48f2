"""The two ways a command fails: the user's input is wrong, or a child process failed."""

from __future__ import annotations

from pathlib import Path


class FtwError(Exception):
    """Bad input or a precondition not met; the message says what to do. Exit code 2."""

    exit_code = 2


class StageError(FtwError):
    """A child process (llamafactory-cli, the converter, the quantizer) failed. Exit code 1."""

    exit_code = 1

    def __init__(self, what: str, log_path: Path, last_lines: list[str], hint: str = ""):
        tail = "\n".join(f"  | {line}" for line in last_lines)
        super().__init__(
            f"{what} failed. Last lines of the log:\n{tail}\nFull log: {log_path}" + (f"\n{hint}" if hint else "")
        )
        self.log_path = log_path
