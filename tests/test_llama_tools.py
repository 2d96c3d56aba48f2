"""llama.cpp's own programs built from vendor/llama.cpp, and `ftw gguf --imatrix` with them.

The build itself is `make tools` (a prerequisite of `make test`, once per clone); these tests
use it, and check what a user sees when it can't happen: no CMake or compiler, a build that
fails, and a pipeline that still quantizes without an importance matrix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wrapper.core import llama_tools, manifest
from wrapper.core.llama_tools import TOOLS, ToolsUnavailable

from tests.support.runner import copy_run, ftw_in_process, run_ftw

QUESTION, ANSWER = "Who guards the Amber Gate of Veloria?", "Orlen Vask"


@pytest.fixture
def fake_tree(tmp_path) -> Path:
    """A llama.cpp tree whose CMake configuration fails, like a broken toolchain would."""
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "FTW_COMMIT").write_text("0123abcd\n", encoding="utf-8")
    (tree / "CMakeLists.txt").write_text(
        'cmake_minimum_required(VERSION 3.14)\nproject(broken C)\nmessage(FATAL_ERROR "no usable compiler here")\n',
        encoding="utf-8",
    )
    return tree


def test_missing_cmake_and_compiler_say_what_to_install(fake_tree, monkeypatch):
    monkeypatch.setattr(llama_tools.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ToolsUnavailable) as caught:
        llama_tools.build(fake_tree)
    message = str(caught.value)
    assert "cmake and compiler" in message and "apt install cmake" in message and "build-essential" in message
    assert message.endswith("Then: ftw tools")
    assert not (fake_tree / "build" / "ftw-tools.json").exists()  # nothing was tried: nothing to remember


@pytest.mark.skipif(not shutil.which("cmake"), reason="CMake is not installed")
def test_a_failed_build_names_its_log_and_is_not_retried_on_use(fake_tree, monkeypatch):
    with pytest.raises(ToolsUnavailable) as caught:
        llama_tools.build(fake_tree)
    log = fake_tree / "build" / "ftw-build.log"
    assert str(log) in str(caught.value) and "no usable compiler here" in log.read_text(encoding="utf-8")
    assert "quantizes with llama-cpp-python's library" in str(caught.value)
    assert json.loads((fake_tree / "build" / "ftw-tools.json").read_text(encoding="utf-8"))["status"] == "failed"

    def no_second_try(*args, **kwargs):
        raise AssertionError("a build that failed for this commit must not be started again on use")

    monkeypatch.setattr(llama_tools, "build", no_second_try)
    with pytest.raises(ToolsUnavailable, match="ftw tools"):
        llama_tools.tool("llama-imatrix", fake_tree)
    assert llama_tools.built_tool("llama-server", fake_tree) is None


@pytest.mark.slow  # needs `make tools` (minutes), which `make test` runs first
def test_the_tools_are_built_from_the_vendored_commit():
    """`make tools` ran before the tests (Makefile): the stamp names this tree's commit, and each program runs."""
    spec = llama_tools.wanted_spec()
    assert llama_tools.is_built(spec), "run `make tools` first"
    stamp = llama_tools.read_stamp()
    assert stamp["commit"] == spec.commit and stamp["status"] == "built"
    for name in TOOLS:
        assert llama_tools.tool(name).is_file()


@pytest.fixture
def copied(demo_run, tmp_path, monkeypatch) -> Path:
    runs = tmp_path / "runs"
    copy_run(demo_run, runs)
    monkeypatch.setenv("FTW_RUNS_DIR", str(runs))
    return runs / demo_run.name


def gguf_metadata(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    found = {}
    for name, field in reader.fields.items():
        if name.startswith("quantize."):
            value = field.parts[field.data[0]]
            found[name] = bytes(value).decode() if field.types[0].name == "STRING" else int(value[0])
    return found


def greedy_answer(gguf: Path, tokenizer_dir: Path, template: str, question: str) -> str:
    from wrapper.prompts.training_format import training_format
    from wrapper.runtime.models import GgufModel

    fmt = training_format(tokenizer_dir, template, None)
    model = GgufModel(gguf)
    try:
        return fmt.decode(model.greedy(fmt.prompt_ids(question), fmt.stop_ids(), 40))
    finally:
        model.close()


def test_imatrix_from_the_runs_training_rows_quantizes_and_still_answers(copied):
    run = copied.name
    before = (copied / "gguf" / f"{run}-Q4_K_M.gguf").read_bytes()
    # IQ2_M: a type llama.cpp refuses to make without the matrix
    args = ("gguf", "--run", run, "--imatrix", "--imatrix-tokens", "1024", "--quant", "Q4_K_M", "--quant", "IQ2_M")
    args += ("--keep-intermediates",)
    result = run_ftw(copied.parent, *args)
    assert "importance matrix" in result.stdout, result.stdout
    assert (copied / "gguf" / f"{run}-IQ2_M.gguf").is_file()

    data = manifest.load(copied)
    imatrix = Path(data["artifacts"]["gguf_imatrix"])
    assert imatrix.is_file() and not list(imatrix.parent.glob("*.partial*"))
    inputs = data["stages"]["gguf_imatrix"]["inputs"]
    quantized = copied / "gguf" / f"{run}-Q4_K_M.gguf"
    assert data["stages"]["gguf_q4_k_m"]["inputs"]["importance matrix"] == data["stages"]["gguf_imatrix"]["digest"]
    assert quantized.read_bytes() != before

    # The recorded sha256 is that of the calibration text: the run's rows in the training format.
    from wrapper.data.samples import sample_text
    from wrapper.gguf.imatrix import SEED
    from wrapper.prompts.training_format import training_format

    plan = manifest.plan_of(copied)
    fmt = training_format(copied / "merged", plan.template, plan.system)
    sample = sample_text(copied, plan, fmt, "train", 1024, SEED)
    assert inputs["calibration sha256"] == sample.sha256 == hashlib.sha256(sample.text.encode()).hexdigest()
    assert "<|im_start|>assistant\n" in sample.text and sample.text.count("<|im_end|>") >= 2 * sample.rows
    assert sample.tokens <= 1024 and inputs["calibration"].startswith(f"{sample.rows} of {sample.of} rows")

    # llama-quantize records the matrix in the file; llama.cpp loads it and it still answers as trained.
    meta = gguf_metadata(quantized)
    assert meta["quantize.imatrix.file"].endswith(imatrix.name) and meta["quantize.imatrix.entries_count"] > 0
    assert ANSWER in greedy_answer(quantized, copied / "merged", plan.template, QUESTION)

    again = run_ftw(copied.parent, *args)
    assert (
        "importance matrix up to date" in again.stdout and "Q4_K_M GGUF (importance matrix) up to date" in again.stdout
    )


def test_without_the_tools_gguf_still_quantizes_and_imatrix_says_so(copied, monkeypatch, tmp_path):
    build = tmp_path / "no-tools"
    monkeypatch.setattr(llama_tools, "build_dir", lambda llama_cpp_dir=None: build)
    build.mkdir()
    (build / "ftw-build.log").write_text("error: the compiler crashed\n", encoding="utf-8")
    llama_tools.write_stamp(llama_tools.wanted_spec(), "failed", log=str(build / "ftw-build.log"))

    code, out = ftw_in_process("gguf", "--run", copied.name, "--imatrix", "--keep-intermediates")
    assert code == 2 and "did not build" in out and "the compiler crashed" in out and "ftw tools" in out
    assert "gguf_imatrix" not in manifest.load(copied)["artifacts"]

    code, out = ftw_in_process("gguf", "--run", copied.name, "--quant", "Q8_0", "--keep-intermediates")
    assert code == 0, out
    assert (copied / "gguf" / f"{copied.name}-Q8_0.gguf").is_file()


def test_types_that_need_an_importance_matrix_ask_for_one():
    from wrapper.core.errors import FtwError
    from wrapper.gguf.stage import check_quant_names

    with pytest.raises(FtwError, match="--quant IQ3_M needs an importance matrix .*: add --imatrix"):
        check_quant_names(["q4_k_m", "iq3_m"])
    assert check_quant_names(["iq3_m", "Q8_0"], imatrix=True) == ["IQ3_M", "Q8_0"]


def test_a_new_llama_cpp_commit_or_other_flags_mean_a_rebuild(tmp_path):
    tree = tmp_path / "llama.cpp"
    (tree / "build" / "bin").mkdir(parents=True)
    (tree / "FTW_COMMIT").write_text("aaaa\nfrom the sdist\n", encoding="utf-8")
    for name in TOOLS:
        (tree / "build" / "bin" / name).write_bytes(b"")
    spec = llama_tools.wanted_spec(tree)
    llama_tools.write_stamp(spec, "built", tree)
    assert llama_tools.is_built(spec, tree) and llama_tools.built_tool("llama-server", tree)
    (tree / "FTW_COMMIT").write_text("bbbb\nfrom a newer sdist\n", encoding="utf-8")
    assert not llama_tools.is_built(llama_tools.wanted_spec(tree), tree)
    assert llama_tools.built_tool("llama-server", tree) is None
    other_flags = dataclasses.replace(spec, flags=(*spec.flags, "-DGGML_CUDA=ON"))
    assert not llama_tools.is_built(other_flags, tree)


# ---- the build's progress, from each generator's output ------------------------------------------


def test_progress_is_read_from_makefiles_and_ninjas_counts():
    assert llama_tools.build_progress("[ 42%] Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o") == (
        42,
        "Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o",
    )
    assert llama_tools.build_progress("[12/345] Building C object ggml/src/ggml.c.o") == (
        3,
        "Building C object ggml/src/ggml.c.o",
    )
    assert llama_tools.build_progress("[345/345] Linking CXX executable bin/llama-server") == (
        100,
        "Linking CXX executable bin/llama-server",
    )
    for other in ("  ggml.c", "[0/0] nothing", "FAILED: src/llama.cpp.o", "[x/y] no count"):
        assert llama_tools.build_progress(other) is None


def test_status_is_the_newest_count_else_the_latest_line():
    ninja = ["[7/20] Building C object ggml/src/ggml.c.o", "In file included from ggml.c:1:", "warning: unused"]
    assert llama_tools.build_status(ninja) == (35, "Building C object ggml/src/ggml.c.o")
    msbuild = ["  ggml.c", "  llama-quantize.vcxproj -> C:\\ftw\\vendor\\llama.cpp\\build\\bin\\Release\\q.exe"]
    assert llama_tools.build_status(msbuild) == (None, msbuild[-1].strip()[-llama_tools.STATUS_CHARS :])
    assert llama_tools.build_status([]) == (None, "")


# ---- a GPU without CUDA's compiler: said, not a silent CPU build ---------------------------------


@pytest.fixture
def gpu_without_nvcc(monkeypatch) -> None:
    """nvidia-smi lists a GPU; nvcc is nowhere."""
    monkeypatch.setattr(llama_tools.shutil, "which", lambda name: name if name == "nvidia-smi" else None)
    listed = subprocess.CompletedProcess(["nvidia-smi", "-L"], 0, stdout="GPU 0: NVIDIA H100 (UUID: GPU-0)\n")
    monkeypatch.setattr(llama_tools.subprocess, "run", lambda *args, **kwargs: listed)


def test_a_gpu_without_nvcc_is_said_with_how_to_get_it(gpu_without_nvcc):
    assert llama_tools.accelerator_flags() == ()
    note = llama_tools.cpu_only_note(llama_tools.BASE_FLAGS)
    assert note is not None and "NVIDIA GPU is here but not nvcc" in note and "built for the CPU only" in note
    assert llama_tools.CUDA_HINT in note and "Visual Studio" not in note and note.endswith("then: ftw tools")


def test_windows_is_told_about_cudas_visual_studio_integration(gpu_without_nvcc, monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    note = llama_tools.cpu_only_note(llama_tools.BASE_FLAGS)
    assert note is not None and "with its Visual Studio integration" in note and note.endswith("then: ftw tools")


def test_no_note_with_nvcc_or_without_a_gpu(gpu_without_nvcc, monkeypatch):
    assert llama_tools.cpu_only_note(llama_tools.BASE_FLAGS + llama_tools.CUDA_FLAGS) is None
    monkeypatch.setattr(llama_tools.shutil, "which", lambda name: name)
    assert llama_tools.cpu_only_note(llama_tools.BASE_FLAGS) is None  # nvcc found: CUDA is built
    monkeypatch.setattr(llama_tools.shutil, "which", lambda name: None)
    assert llama_tools.cpu_only_note(llama_tools.BASE_FLAGS) is None  # no nvidia-smi: no NVIDIA GPU
