"""The dtype a base trains in on a CPU: float32 unless the CPU has fast bfloat16, forced either way by
model.cpu_dtype, and the folder whose config.json makes LLaMA-Factory load it so.

The guard: a CPU profile must never load bfloat16 weights on a CPU without fast bfloat16 (there PyTorch's
reference gemm made the demo ~33x slower per step; bench/README.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from wrapper.config import compute_dtype
from wrapper.core import cpu
from wrapper.core.cpu import Bf16Support
from wrapper.train import base_dtype
from wrapper.train.render import render

from tests.support.runner import REPO

DEMO_MODEL = REPO / "models" / "smollm2-135m-instruct"
EPYC_FLAGS = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2 sha_ni"  # AMD EPYC, AVX2 only
SAPPHIRE_FLAGS = EPYC_FLAGS + " avx512f avx512bw avx512_bf16 amx_bf16 amx_tile"


def write_cpuinfo(tmp_path: Path, flags: str, key: str = "flags") -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: some CPU\n{key}\t\t: {flags}\n\nprocessor\t: 1\n", encoding="utf-8")
    return path


@pytest.fixture
def cpu_reports(monkeypatch, tmp_path):
    """Make this machine's CPU report the given flags (and forget any forced answer)."""
    monkeypatch.delenv(cpu.FAST_BF16_ENV, raising=False)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")

    def report(flags: str) -> None:
        monkeypatch.setattr(cpu, "CPUINFO", write_cpuinfo(tmp_path, flags))

    return report


def test_flags_are_read_from_cpuinfo(tmp_path):
    assert "avx2" in cpu.cpu_flags(write_cpuinfo(tmp_path, EPYC_FLAGS))
    assert "bf16" in cpu.cpu_flags(write_cpuinfo(tmp_path, "fp asimd bf16 sve", key="Features"))
    assert cpu.cpu_flags(tmp_path / "missing") is None


def test_an_avx2_cpu_has_no_fast_bf16_and_a_sapphire_rapids_has(cpu_reports):
    cpu_reports(EPYC_FLAGS)
    support = cpu.bf16_support()
    assert not support.fast and "no avx512_bf16 or amx_bf16" in support.evidence
    cpu_reports(SAPPHIRE_FLAGS)
    support = cpu.bf16_support()
    assert support.fast and "avx512_bf16, amx_bf16" in support.evidence


def test_arm_is_float32_and_the_environment_forces_either(monkeypatch):
    monkeypatch.delenv(cpu.FAST_BF16_ENV, raising=False)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert not cpu.bf16_support().fast
    monkeypatch.setenv(cpu.FAST_BF16_ENV, "1")
    assert cpu.bf16_support() == Bf16Support(True, f"{cpu.FAST_BF16_ENV}=1")


def test_auto_follows_the_cpu_and_a_setting_forces_either():
    slow, fast = Bf16Support(False, "avx2 only"), Bf16Support(True, "amx_bf16")
    assert compute_dtype.for_cpu("auto", slow).dtype == "float32"
    assert compute_dtype.for_cpu("auto", fast).dtype == "bfloat16"
    assert compute_dtype.for_cpu("bfloat16", slow).dtype == "bfloat16"
    assert compute_dtype.for_cpu("float32", fast).dtype == "float32"
    assert "avx2 only" in compute_dtype.for_cpu("auto", slow).reason


def rendered(runs_dir: Path, run: str, *overrides: str) -> tuple[dict, object]:
    plan = render("demo", "cpu", run, [], list(overrides))
    return yaml.safe_load((runs_dir / run / "train.yaml").read_text(encoding="utf-8")), plan


def test_guard_a_cpu_without_fast_bf16_never_loads_bf16_weights(runs_dir, cpu_reports):
    """The demo's base says bfloat16 in its config.json: on an AVX2-only CPU, train.yaml must point
    LLaMA-Factory at a config that says float32."""
    assert (
        compute_dtype.config_dtype(json.loads((DEMO_MODEL / "config.json").read_text(encoding="utf-8"))) == "bfloat16"
    )
    cpu_reports(EPYC_FLAGS)
    train, plan = rendered(runs_dir, "slow-cpu")
    assert plan.compute_dtype == "float32" and "no fast bfloat16" in plan.compute_dtype_reason
    assert train["model_name_or_path"] == str(runs_dir / "slow-cpu" / "base-float32")
    assert plan.base_model == str(DEMO_MODEL)  # export merges into the base itself, as before
    assert "float32" in (runs_dir / "slow-cpu" / "train.yaml").read_text(encoding="utf-8")  # the origin comment
    assert train["disable_gradient_checkpointing"] is True  # no recomputation in the backward pass on a CPU

    cpu_reports(SAPPHIRE_FLAGS)
    train, plan = rendered(runs_dir, "fast-cpu")
    assert plan.compute_dtype == "bfloat16"
    assert train["model_name_or_path"] == str(DEMO_MODEL)  # already bfloat16: loaded as it is


def test_the_recipe_key_forces_a_dtype_on_any_cpu(runs_dir, cpu_reports):
    cpu_reports(SAPPHIRE_FLAGS)
    train, plan = rendered(runs_dir, "forced", "model.cpu_dtype=float32")
    assert plan.compute_dtype == "float32" and plan.compute_dtype_reason == "model.cpu_dtype: float32"
    assert train["model_name_or_path"] == str(runs_dir / "forced" / "base-float32")


def test_gpu_profiles_keep_the_base_as_it_is(runs_dir):
    plan = render("demo", "rtx4070", "gpu", [], [])
    assert plan.compute_dtype is None and plan.train_args["model_name_or_path"] == str(DEMO_MODEL)


def fake_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}), encoding="utf-8"
    )
    (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").write_text("kept", encoding="utf-8")
    return folder


def test_the_folder_links_the_weights_and_changes_only_the_dtype(tmp_path):
    source = fake_model(tmp_path / "base")
    folder = tmp_path / "run" / "base-float32"
    base_dtype.make(source, folder, "float32")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config == {"model_type": "llama", "torch_dtype": "float32", "dtype": "float32"}
    assert b"\r" not in (folder / "config.json").read_bytes()
    assert os.path.samefile(folder / "model.safetensors", source / "model.safetensors")  # linked, not copied
    assert (folder / "extra" / "notes.txt").read_text(encoding="utf-8") == "kept"
    assert (
        json.loads((source / "config.json").read_text(encoding="utf-8"))["torch_dtype"] == "bfloat16"
    )  # the base is untouched
    assert base_dtype.is_current(folder, source, "float32") and not base_dtype.is_current(folder, source, "bfloat16")
    assert not list(folder.parent.glob(".base-float32-*"))  # no staging folder left behind


LOAD_AS_LLAMAFACTORY_DOES = """
import json, sys
import yaml
from llamafactory.hparams import get_train_args
from llamafactory.model import load_model, load_tokenizer
with open(sys.argv[1], encoding="utf-8") as handle:
    args = yaml.safe_load(handle)
model_args, _, _, finetuning_args, _ = get_train_args(args)
tokenizer = load_tokenizer(model_args)["tokenizer"]
model = load_model(tokenizer, model_args, finetuning_args, is_trainable=True)
params = list(model.named_parameters())
print(json.dumps({
    "frozen": sorted({str(p.dtype) for _, p in params if not p.requires_grad}),
    "trainable": sorted({str(p.dtype) for _, p in params if p.requires_grad}),
    "checkpointing": bool(getattr(model, "is_gradient_checkpointing", True)),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("forced, frozen", [("float32", "torch.float32"), ("bfloat16", "torch.bfloat16")])
def test_llamafactory_really_holds_the_frozen_weights_in_the_chosen_dtype(runs_dir, forced, frozen):
    """LLaMA-Factory's own loader, on the rendered train.yaml: the frozen base weights are in the dtype the
    plan chose (the LoRA weights are float32 either way: LLaMA-Factory upcasts what trains)."""
    import subprocess
    import sys

    plan = render("demo", "cpu", f"load-{forced}", [], [f"model.cpu_dtype={forced}"])
    base_dtype.ensure(plan)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AS_LLAMAFACTORY_DOES, str(runs_dir / plan.run / "train.yaml")],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
        encoding="utf-8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dtypes = json.loads(result.stdout.strip().splitlines()[-1])
    # the CPU profile turns gradient checkpointing off: a quarter of each step, for RAM a small model has
    assert dtypes == {"frozen": [frozen], "trainable": ["torch.float32"], "checkpointing": False}


def test_llama_cpp_is_built_without_amx_kernels_where_the_cpu_has_amx(cpu_reports):
    """ggml's AMX kernels stopped llama.cpp with a general protection fault on an AMX Xeon (wrapper/core/cpu.py):
    the tools' build and llama-cpp-python's rebuild leave them out there, and only there."""
    from wrapper.core import llama_tools

    cpu_reports(SAPPHIRE_FLAGS)
    assert cpu.native_build_cflags() == cpu.NO_AMX_FLAGS
    assert "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in llama_tools.cpu_flags_args()
    cpu_reports(EPYC_FLAGS)
    assert cpu.native_build_cflags() == () and llama_tools.cpu_flags_args() == ()
