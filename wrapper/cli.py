"""`ftw`: the command line. The commands live in wrapper/commands/ (one module per part of
the path); here they are assembled, and every failure becomes a message and an exit code:

  0  done
  1  a child process failed (the message names its log), or `ftw data check` found invalid rows
  2  bad input or a precondition not met; the message says what to do
  128+N  stopped by signal N (Ctrl-C, SIGTERM, SIGHUP; Windows: SIGBREAK): children stopped, unfinished
         files removed
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import click
from rich.markup import escape

from wrapper.commands import data, doctor, evaluate, export, publish, serve, setup, status, train
from wrapper.core.errors import FtwError
from wrapper.core.manifest import package_version, versions
from wrapper.core.platform import STOP_SIGNALS
from wrapper.core.ui import error_console, never_fail_to_print, quiet_libraries

INTERRUPTED = (
    "[yellow]interrupted[/yellow]: the child processes were stopped and unfinished files removed. "
    "Re-run the same command to continue (training resumes from its last complete checkpoint)."
)


def version_line() -> str:
    found = {"ftw": package_version("ftw"), **versions()}
    named = {key: value or "not installed" for key, value in found.items()}
    commit = found["llama.cpp"]
    return (
        f"ftw {named['ftw']} (LLaMA-Factory {named['llamafactory']}, "
        f"llama-cpp-python {named['llama_cpp_python']}, "
        f"llama.cpp {commit[:12] if commit else 'not unpacked: run ftw setup'})"
    )


def show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=show_version,
    help="Show the versions of ftw, LLaMA-Factory and llama.cpp, and exit.",
)
def cli() -> None:
    """Fine-tune with LLaMA-Factory, convert with llama.cpp, serve with Ollama / LM Studio.

    \b
    The whole path on the demo recipe:
      ftw render --recipe demo --profile cpu --run demo
      ftw train --run demo && ftw export --run demo && ftw gguf --run demo
      ftw modelfile --run demo && ftw smoke --run demo
    """


for module in (setup, train, export, serve, evaluate, data, publish, status, doctor):
    for command in module.COMMANDS:
        cli.add_command(command)


class Stopped(KeyboardInterrupt):
    """SIGTERM, SIGHUP or Windows' SIGBREAK (a shutdown, `kill`, a closed terminal, Ctrl-Break): unwinds
    like Ctrl-C, so that the children are stopped and partial files removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def stop_on_signals() -> None:
    def handler(signum, _frame):
        raise Stopped(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def main() -> None:
    """Results go to stdout; every message about a failure or a stop goes to stderr, so that
    `ftw plan --json | jq` reads the JSON alone."""
    never_fail_to_print()
    quiet_libraries()
    stop_on_signals()
    try:
        cli.main(standalone_mode=False)
    except FtwError as exc:
        error_console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        error_console.print(INTERRUPTED, soft_wrap=True)
        stop = exc if isinstance(exc, Stopped) else exc.__cause__  # click turns KeyboardInterrupt into Abort
        sys.exit(128 + (stop.signum if isinstance(stop, Stopped) else signal.SIGINT))
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            unexpected(exc)
        where = f" while writing {exc.filename}" if exc.filename else ""
        error_console.print(
            f"[bold red]error:[/bold red] the disk is full{where} ({exc.strerror}). The unfinished file "
            f"was removed; free some space and re-run the same command.",
            soft_wrap=True,
        )
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - a bug of ftw's: one line for the user, the traceback in a file
        unexpected(exc)


def unexpected(exc: BaseException) -> None:
    """No traceback reaches a user: it goes to a log, and the message names it. FTW_TRACEBACK=1 shows it here."""
    if os.environ.get("FTW_TRACEBACK") == "1":
        raise exc
    text = "".join(traceback.format_exception(exc))
    log = Path(tempfile.gettempdir()) / "ftw-error.log"
    try:
        with log.open("a", encoding="utf-8", newline="\n") as handle:
            handle.write(f"--- ftw {' '.join(sys.argv[1:])}\n{text}\n")
    except OSError:
        log = None
    error_console.print(
        f"[bold red]error:[/bold red] ftw stopped on an unexpected {type(exc).__name__}: {escape(str(exc))}. "
        + (f"The traceback is in {log}; " if log else "")
        + "please report it with the command you ran.",
        soft_wrap=True,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
