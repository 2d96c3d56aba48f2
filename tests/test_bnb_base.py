"""A pre-quantized bitsandbytes base (like unsloth/*-bnb-4bit) goes all the way to a GGUF.

llama.cpp's converter can't read bitsandbytes weights, and LLaMA-Factory won't merge a
LoRA into them. With no model.full_precision_base, `ftw export` makes a dequantized copy
of the base and merges into that. These tests run the real CLI on a tiny random Qwen2
(real Qwen2 tokenizer) quantized to NF4 on the CPU; see tests/support/models.py.
"""

from __future__ import annotations

import collections
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.models import (
    convert_hf_to_gguf,
    gguf_tensor_types,
    quantize_gguf,
    tiny_qwen2_bnb_dir,
    tiny_qwen2_dir,
    write_alpaca_dataset,
)
from tests.support.runner import run_ftw

# Real conversions, quantizations or training runs: minutes (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow

STAGE_TIMEOUT_S = 300


def ftw(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The installed `ftw` command, run from the test's folder (not the repository), runs in tmp_path/runs."""
    return run_ftw(tmp_path / "runs", *args, check=check, timeout=STAGE_TIMEOUT_S, cwd=tmp_path, installed=True)


def write_recipe(tmp_path: Path, model: dict, **train) -> Path:
    data = write_alpaca_dataset(tmp_path / "data" / "tiny.json")
    recipe = {
        "description": "tiny Qwen2 from a pre-quantized bitsandbytes base",
        "model": {**model, "template": "qwen"},
        "method": "qlora",
        "dataset": [str(data)],
        "train": {
            "lora_rank": 8,
            "lora_target": "all",
            "num_train_epochs": 1,
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "cutoff_len": 64,
            "logging_steps": 1,
            "save_steps": 1000,
            **train,
        },
    }
    path = tmp_path / "bnb-recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def read_manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))


def test_tiny_qwen2_converts_and_uses_k_quants(tmp_path):
    """The fixture other tests rely on: a clean convert (pre-tokenizer known) and real k-quants."""
    f16 = tmp_path / "tiny-f16.gguf"
    done = convert_hf_to_gguf(tiny_qwen2_dir(), f16)
    output = done.output
    assert done.ok, output[-4000:]
    assert "chkhsh" not in output and "pre-tokenizer" not in output.lower(), output[-4000:]

    from gguf import GGUFReader

    field = GGUFReader(f16).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "qwen2"

    q4 = tmp_path / "tiny-Q4_K_M.gguf"
    quantize_gguf(f16, q4, "Q4_K_M")
    types = collections.Counter(gguf_tensor_types(q4).values())
    assert types["Q4_K"] > 0 and types["Q6_K"] > 0, types
    assert not {"Q5_0", "Q5_1", "Q8_0", "Q4_0"} & set(types), f"k-quant fallbacks: {types}"


def test_converter_refuses_bitsandbytes_checkpoint(tmp_path):
    """The failure ftw's export prevents: llama.cpp can't convert bitsandbytes weights."""
    done = convert_hf_to_gguf(tiny_qwen2_bnb_dir(), tmp_path / "bnb-f16.gguf")
    output = done.output
    assert not done.ok, output[-4000:]
    assert "bitsandbytes" in output, output[-4000:]
    assert "Quant method is not yet supported" in output, output[-4000:]


def test_full_precision_base_is_the_merge_base(tmp_path):
    full = tiny_qwen2_dir().resolve()
    recipe = write_recipe(tmp_path, {"base": str(tiny_qwen2_bnb_dir()), "full_precision_base": str(full)})
    ftw(tmp_path, "render", "--recipe", str(recipe), "--profile", "cpu", "--run", "fpb")

    run_dir = tmp_path / "runs" / "fpb"
    plan = read_manifest(run_dir)["plan"]
    assert plan["base_quantization"] == "bitsandbytes"
    assert plan["merge_base"] == str(full)
    assert plan["merge_base_source"] == "model.full_precision_base"
    export_args = yaml.safe_load((run_dir / "export.yaml").read_text(encoding="utf-8"))
    assert export_args["model_name_or_path"] == str(full)
    train_args = yaml.safe_load((run_dir / "train.yaml").read_text(encoding="utf-8"))
    assert plan["base_model"] == str(tiny_qwen2_bnb_dir().resolve())
    assert train_args["model_name_or_path"] == str(run_dir / "base-float32")  # its config, in float32 on the CPU
    assert "quantization_bit" not in train_args  # the base is 4-bit already


def test_bnb_base_end_to_end(tmp_path):
    from safetensors.torch import load_file

    bnb = tiny_qwen2_bnb_dir().resolve()
    # A high learning rate so two steps leave a LoRA delta that survives bf16 rounding.
    recipe = write_recipe(tmp_path, {"base": str(bnb)}, learning_rate=1.0e-2, warmup_steps=0)
    run_dir = tmp_path / "runs" / "bnb"

    ftw(tmp_path, "render", "--recipe", str(recipe), "--profile", "cpu", "--run", "bnb")
    plan = read_manifest(run_dir)["plan"]
    assert plan["base_quantization"] == "bitsandbytes"
    assert plan["merge_base_source"].startswith("a dequantized copy")
    assert plan["merge_base"] == str(run_dir / "base-dequantized")
    train_args = yaml.safe_load((run_dir / "train.yaml").read_text(encoding="utf-8"))
    assert plan["base_model"] == str(bnb) and "quantization_bit" not in train_args
    assert train_args["model_name_or_path"] == str(run_dir / "base-float32")

    ftw(tmp_path, "train", "--run", "bnb")
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    # The QLoRA as a GGUF adapter needs a base GGUF, and llama.cpp can't read the 4-bit one: asked for.
    refused = ftw(tmp_path, "gguf", "--run", "bnb", "--adapter", check=False)
    assert refused.returncode == 2 and "bitsandbytes 4-bit checkpoint" in " ".join(
        (refused.stdout + refused.stderr).split()
    )
    assert not (run_dir / "gguf" / "bnb-lora.gguf").exists()

    ftw(tmp_path, "export", "--run", "bnb")
    dequantized, merged = run_dir / "base-dequantized", run_dir / "merged"
    for folder in (dequantized, merged):
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        assert "quantization_config" not in config, f"{folder} is still quantized"
    assert read_manifest(run_dir)["artifacts"]["merged"] == str(merged)
    assert not (merged / "Modelfile").exists()

    # The dequantized copy is the original model up to NF4 rounding; the merge changed it.
    original = load_file(tiny_qwen2_dir() / "model.safetensors")
    copy = load_file(dequantized / "model.safetensors")
    merged_weights = load_file(merged / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert copy[key].dtype == original[key].dtype
    error = ((copy[key].float() - original[key].float()).norm() / original[key].float().norm()).item()
    assert 0 < error < 0.25, f"dequantized {key} is off by {error:.3f} (relative)"
    assert any(not merged_weights[k].equal(copy[k]) for k in copy if "layers" in k and k.endswith("proj.weight")), (
        "the merged model equals the dequantized base: the LoRA was not merged"
    )

    ftw(tmp_path, "gguf", "--run", "bnb")
    data = read_manifest(run_dir)
    q4 = Path(data["artifacts"]["gguf_q4_k_m"])
    assert q4.is_file() and q4.parent == run_dir / "gguf"
    # The f16 GGUF and the merged weights were intermediates: removed once Q4_K_M was verified.
    assert set(data["removed_intermediates"]) == {"merged", "gguf_f16"}
    assert not (run_dir / "gguf" / "bnb-f16.gguf").exists() and not list(merged.glob("*.safetensors"))
    types = collections.Counter(gguf_tensor_types(q4).values())
    assert types["Q4_K"] > 0, types

    import llama_cpp

    llm = llama_cpp.Llama(str(q4), n_ctx=256, n_threads=2, seed=0, verbose=False)
    try:
        prompt = llm.tokenize(
            b"<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", add_bos=False, special=True
        )
        assert prompt[0] == 151644 and 9707 in prompt  # <|im_start|> and "Hello" as Qwen2 encodes them
        token = next(llm.generate(prompt, top_k=1, temp=0.0))
        assert 0 <= token < llm.n_vocab()
    finally:
        llm.close()

    # Now the adapter converts (given the 4-bit base's config without its quantization_config) and the
    # base GGUF is made from the dequantized copy export left; llama.cpp applies the pair.
    from wrapper.core.gguf_io import GgufShape

    ftw(tmp_path, "gguf", "--run", "bnb", "--adapter")
    artifacts = read_manifest(run_dir)["artifacts"]
    lora, base = Path(artifacts["gguf_lora"]), Path(artifacts["gguf_base_q4_k_m"])
    shape = GgufShape.read(lora)
    assert (shape.file_type, shape.architecture) == ("adapter", "qwen2") and shape.tensors > 0
    assert (run_dir / "Modelfile.adapter").is_file()
    llm = llama_cpp.Llama(str(base), lora_path=str(lora), n_ctx=256, n_threads=2, seed=0, verbose=False)
    try:
        assert 0 <= next(llm.generate(prompt, top_k=1, temp=0.0)) < llm.n_vocab()
    finally:
        llm.close()
