"""The one console, and how the layers below commands/ report long work on it.

commands/ print results (tables, summaries, what to run next) on `console`; cli.py prints errors
on `error_console`. Below commands/, long work only says how it goes, through the functions here:
`step` (what starts now, its log, a warning on the way), `done` (a step finished), `spinner`
and the progress bars. tests/test_architecture.py holds every module to that.
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(highlight=False)
error_console = Console(highlight=False, stderr=True)

# Libraries used in-process (LLaMA-Factory's parser and templates, transformers) log at
# INFO; the person at the terminal needs only our summary. Children get the user's own
# settings back (see procs.child_env), so the stage logs stay complete.
QUIET_ENV = {"LLAMAFACTORY_VERBOSITY": "ERROR", "TRANSFORMERS_VERBOSITY": "error"}
users_env: dict[str, str | None] = {}


# What ftw prints beyond ASCII: the done mark, Russian and Kazakh (paths, rows, languages).
PRINTED_TEXT = "✓ Қазақ Русский"


def never_fail_to_print() -> None:
    """stdout and stderr replace what their encoding lacks instead of raising UnicodeEncodeError. A Windows
    console takes any text (PEP 528), but a redirected or piped stdout there (`ftw ... > log.txt`, CI) has the
    ANSI code page, cp1252 say, which has neither `✓` nor Cyrillic. The encoding itself stays what whoever
    reads the stream expects; a UTF-8 stream is left as it is."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if not encoding or not hasattr(stream, "reconfigure"):
            continue  # not a text file (a test's StringIO): nothing to encode
        try:
            PRINTED_TEXT.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            stream.reconfigure(errors="replace")


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


def byte_progress() -> Progress:
    """Reading files: bytes done, speed; gone when finished, and off where stdout is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def count_progress() -> Progress:
    """Items done of all, a rate the caller sets (`rate` field), the time left; off where stdout is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def spinner(message: str) -> AbstractContextManager[Any]:
    """A spinner saying `message` while the block runs."""
    return console.status(message)


def step(message: str) -> None:
    """One line of long work as it goes: what starts now and where its log is, or a warning on the way."""
    console.print(message, soft_wrap=True)


def done(message: str) -> None:
    console.print(f"[green]✓[/green] {message}")
