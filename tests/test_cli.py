"""The command line itself: every command's help ends with an example that parses as written,
every `ftw` and `make` command in the README and docs/ does too, and `ftw --version` names
the versions that matter in a bug report."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from wrapper.cli import cli
from wrapper.commands.setup import DEMO_STEPS

from tests.support.runner import REPO

DOCS = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]


def leaf_commands(group: click.Group = cli, prefix: str = "ftw") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += leaf_commands(command, f"{prefix} {name}")
        else:
            found.append((f"{prefix} {name}", command))
    return found


COMMANDS = leaf_commands()


@pytest.fixture
def parse_only(monkeypatch):
    """Parse an ftw command line with click, as `ftw` would, but run nothing: (command, its arguments)."""
    called = []
    for name, command in COMMANDS:
        monkeypatch.setattr(command, "callback", lambda *args, _name=name, **kwargs: called.append((_name, kwargs)))

    def parse(line: str) -> tuple[str, dict]:
        argv = shlex.split(line)
        assert argv[0] == "ftw", line
        called.clear()
        cli.main(argv[1:], prog_name="ftw", standalone_mode=False)
        assert len(called) == 1, f"{line!r} ran no command"
        return called[0]

    return parse


def examples(command: click.Command) -> list[str]:
    text = command.help or ""
    after = text.split("Example:", 1)[1] if "Example:" in text else ""
    return [line.strip() for line in after.splitlines() if line.strip().startswith("ftw ")]


@pytest.mark.parametrize("name, command", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_shows_an_example_that_parses(parse_only, name, command):
    found = examples(command)
    assert found, f"`{name} --help` has no 'Example:'"
    for line in found:
        assert parse_only(line)[0] == name


def doc_command_lines(path: Path) -> list[str]:
    """Command lines in the sh/bash blocks of a Markdown file: continuations joined, comments and prompts removed,
    `a && b` split."""
    lines = []
    for block in re.findall(r"```(?:sh|bash|console|shell)\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.strip().removeprefix("$ ")
            line = re.split(r"\s+#", line, maxsplit=1)[0].strip()
            lines += [part.strip() for part in re.split(r"&&|;", line) if part.strip()]
    return lines


# The venv's ftw as PowerShell runs it (README.md, "Windows"): `.venv\Scripts\ftw ...` is `ftw ...`.
POWERSHELL_FTW = re.compile(r"^(?:\.\\)?\.venv\\Scripts\\ftw(?:\.exe)?(?=\s|$)")


def powershell_ftw_lines(path: Path) -> list[str]:
    """The `ftw` command lines in the powershell blocks of a Markdown file, spelled `ftw ...`."""
    lines = []
    for block in re.findall(r"```powershell\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            line = re.split(r"\s+#", line.strip(), maxsplit=1)[0].strip()
            if POWERSHELL_FTW.match(line):
                lines.append(POWERSHELL_FTW.sub("ftw", line))
    return lines


def test_the_docs_have_commands_to_check():
    assert sum(len(doc_command_lines(path)) for path in DOCS) > 20


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_every_ftw_and_make_command_in_the_docs_is_real(parse_only, path):
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(encoding="utf-8"), re.M))
    for line in doc_command_lines(path) + powershell_ftw_lines(path):
        words = shlex.split(line)
        if words[0] == "ftw":
            parse_only(line)
        elif words[0] == "make":
            named = [word for word in words[1:] if "=" not in word and not word.startswith("-")]
            assert set(named) <= targets, f"{path.name}: `{line}` names a target the Makefile doesn't have"


def test_the_windows_section_runs_ftw_setup_and_demo_from_the_venv():
    assert {"ftw setup", "ftw demo"} <= set(powershell_ftw_lines(REPO / "README.md"))


def test_every_step_of_ftw_demo_is_a_real_command(parse_only):
    for argv in DEMO_STEPS:
        parse_only(shlex.join(["ftw", *argv]))


def test_version_names_ftw_llamafactory_and_llama_cpp(capsys):
    assert cli.main(["--version"], prog_name="ftw", standalone_mode=False) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"ftw \S+ \(LLaMA-Factory 0\.9\.5, llama-cpp-python 0\.3\.36, llama\.cpp [0-9a-f]{12}\)\n", out)
