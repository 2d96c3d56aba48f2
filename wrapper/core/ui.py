"""The one console every stage prints to, and the progress bar style they share."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(highlight=False)
error_console = Console(highlight=False, stderr=True)

# Libraries used in-process (LLaMA-Factory's parser and templates, transformers) log at
# INFO; the person at the terminal needs only our summary. Children get the user's own
# settings back (see procs.child_env), so the stage logs stay complete.
QUIET_ENV = {"LLAMAFACTORY_VERBOSITY": "ERROR", "TRANSFORMERS_VERBOSITY": "error"}
users_env: dict[str, str | None] = {}


def quiet_libraries() -> None:
    for key, value in QUIET_ENV.items():
        users_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value


def stage_progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )


def done(message: str) -> None:
    console.print(f"[green]✓[/green] {message}")
