"""Every command and subcommand, with each required option missing or empty, and each file option empty or
naming a file that isn't there: exit 2 and a short message that names the option or the
file, never a traceback. In process (no model is loaded: each case fails before anything long starts)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest

from wrapper import cli as ftw_cli

# A valid value for each option whose value isn't the point of the case (nothing named "nosuchrun" exists).
PLACEHOLDERS = {
    "--run": "nosuchrun",
    "--recipe": "demo",
    "--profile": "cpu",
    "--teacher": "http://127.0.0.1:9/v1",
    "--repo": "alice/model",
}
# Optional options a command needs to get as far as the case's option.
NEEDED = {("plan",): {"--profile": "cpu"}}
# Options that name a file or folder the user gives, with a path that doesn't exist.
FILE_OPTIONS = ("--data", "--docs", "--recipe", "--profile", "--base")


def commands(group: click.Group = ftw_cli.cli, path: tuple[str, ...] = ()) -> list[tuple[tuple, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.is_flag and p.opts[0] != "--help"]


def base_args(path: tuple[str, ...], command: click.Command, missing: Path) -> dict[str, str]:
    """The required options with placeholder values; a required argument gets a missing path."""
    args = dict(NEEDED.get(path, {}))
    for option in options(command):
        if option.required:
            args[option.opts[0]] = PLACEHOLDERS.get(option.opts[0], str(missing))
    return args


def argv(path: tuple[str, ...], command: click.Command, args: dict[str, str], missing: Path) -> list[str]:
    words = [*path]
    for name, value in args.items():
        words += [name, value]
    words += [str(missing) for p in command.params if isinstance(p, click.Argument) and p.required]
    return words


def run_main(words: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["ftw", *words])
    monkeypatch.setattr(ftw_cli, "stop_on_signals", lambda: None)  # the test process keeps its own handlers
    monkeypatch.setattr(ftw_cli, "quiet_libraries", lambda: None)  # and its environment, which later ftw runs inherit
    with pytest.raises(SystemExit) as stopped:
        ftw_cli.main()
    captured = capsys.readouterr()
    return stopped.value.code, captured.out + captured.err


def cases() -> list:
    found = []
    for path, command in commands():
        name = " ".join(path)
        for option in options(command):
            flag = option.opts[0]
            if option.required:
                found.append(pytest.param(path, flag, "missing", id=f"{name} {flag} missing"))
            if isinstance(option.type, click.types.StringParamType) and (option.required or flag in FILE_OPTIONS):
                found.append(pytest.param(path, flag, "empty", id=f"{name} {flag} empty"))
            if flag in FILE_OPTIONS:
                found.append(pytest.param(path, flag, "no such file", id=f"{name} {flag} no such file"))
    return found


@pytest.mark.parametrize("path, flag, case", cases())
def test_bad_options_exit_2_with_a_message_not_a_traceback(path, flag, case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTW_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere" / "missing.yaml"
    command = dict(commands())[path]
    args = base_args(path, command, missing)
    if case == "missing":
        del args[flag]
    elif case == "empty":
        args[flag] = ""
    else:
        args[flag] = str(missing)
    code, output = run_main(argv(path, command, args, missing), monkeypatch, capsys)
    assert "Traceback" not in output, output
    assert code == 2, output
    named = {"missing": flag, "empty": flag.lstrip("-"), "no such file": "missing.yaml"}[case]
    assert named in output, output
    assert len(output.strip().splitlines()) <= 6, output  # a message, not a dump


def test_a_bug_is_one_line_and_a_log_not_a_traceback(tmp_path, monkeypatch, capsys):
    from wrapper.commands import train as train_commands

    def broken(*args, **kwargs):
        raise TypeError("expected str, bytes or os.PathLike object, not NoneType")

    monkeypatch.setattr(train_commands, "train_run", broken)
    monkeypatch.setattr(train_commands, "run_dir_of", lambda run: tmp_path)
    monkeypatch.setattr(ftw_cli.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("FTW_TRACEBACK", raising=False)
    code, output = run_main(["train", "--run", "x"], monkeypatch, capsys)
    assert code == 1 and "Traceback" not in output
    assert "unexpected TypeError: expected str" in output and str(tmp_path / "ftw-error.log") in output
    log = (tmp_path / "ftw-error.log").read_text(encoding="utf-8")
    assert "--- ftw train --run x" in log and "Traceback" in log and "in broken" in log
