"""`ftw doctor`: one line for each thing the path needs, what to do where it is missing, and exit 0."""

from __future__ import annotations

import sys

import torch

from wrapper.commands import doctor

from tests.support.runner import ftw_in_process


def test_doctor_reports_every_item_and_exits_0(runs_dir):
    ran = ftw_in_process("doctor")
    assert ran.code == 0, ran.output
    for what in ("Python", "PyTorch", "bitsandbytes", "llama-cpp-python", "llama.cpp tools", "Go", "Ollama"):
        assert f" {what}: " in f" {ran.output}", (what, ran.output)
    for what in ("LM Studio", "disk", "RAM", "CPU bfloat16"):
        assert f" {what}: " in ran.output, (what, ran.output)
    assert str(runs_dir) in ran.output  # the free disk is measured where the runs go, before the folder exists


def test_a_missing_llama_cpp_tree_says_to_run_ftw_setup(monkeypatch):
    monkeypatch.setattr(doctor, "llama_cpp_commit", lambda: None)
    finding = doctor.llama_cpp_tree_finding()
    assert (finding.state, finding.todo) == ("missing", "ftw setup")


def test_a_cpu_only_torch_on_windows_names_pytorchs_cuda_index_and_the_venvs_pip(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(torch.version, "cuda", None)
    finding = doctor.torch_finding()
    assert finding.state == "note" and "CPU-only" in finding.found
    assert finding.todo.startswith(r"for an NVIDIA GPU: .venv\Scripts\pip install torch==")
    assert finding.todo.endswith(f"--index-url {doctor.TORCH_CUDA_INDEX}")
