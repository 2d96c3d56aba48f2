"""The streaming merge (wrapper/merge.py) against PEFT's merge_and_unload.

Adapters are made directly with peft.get_peft_model on the tiny random Qwen2 (real
Qwen2 vocabulary; tests/support/models.py), with random non-zero A and B so every delta is
visible, and saved with save_pretrained: the files a LLaMA-Factory LoRA run leaves.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from wrapper.export.merge import NotStreamable, merge_weights, plan_merge

from tests.support.models import convert_hf_to_gguf, quantize_gguf, tiny_qwen2_dir

# Real conversions, quantizations or training runs: minutes (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def make_adapter(out: Path, seed: int = 0, **lora) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir(), dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": "all-linear", **lora}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05 + (1.0 if "norm" in name else 0.0))
    peft_model.save_pretrained(out)
    return out


def peft_merged(adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir(), dtype=torch.bfloat16)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().to(torch.bfloat16)


def streamed(adapter: Path, out: Path, weights_dtype: str = "base") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    merge_weights(tiny_qwen2_dir(), adapter, out, weights_dtype)
    for name in TOKENIZER_FILES:
        if (tiny_qwen2_dir() / name).is_file():
            shutil.copyfile(tiny_qwen2_dir() / name, out / name)
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def assert_same_as_peft(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    reference = {k: v for k, v in reference.items() if k != "lm_head.weight"}  # tied: saved as embed_tokens
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        assert ours[name].dtype == tensor.dtype == torch.bfloat16, name
        # Same float32 sum rounded once to bf16: equal, or one bf16 step apart where the
        # matmul's summation order differs.
        torch.testing.assert_close(ours[name].float(), tensor.float(), rtol=2**-7, atol=1e-6, msg=name)
        assert (ours[name] == tensor).float().mean() > 0.99, name


@pytest.fixture(scope="module")
def rslora_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("rslora")
    adapter = make_adapter(root / "adapter", use_rslora=True, modules_to_save=["model.norm"], r=4, lora_alpha=32)
    return root, adapter


def test_plain_lora_matches_peft(tmp_path):
    adapter = make_adapter(tmp_path / "adapter", seed=1)
    reference = peft_merged(adapter).state_dict()
    ours = streamed(adapter, tmp_path / "merged")
    base = tiny_qwen2_dir()
    changed = [n for n in ours if "proj" in n and n.endswith(".weight")]
    assert len(changed) == 14
    assert_same_as_peft(ours, reference)
    from safetensors.torch import load_file

    original = load_file(base / "model.safetensors")
    assert not torch.equal(
        original["model.layers.0.self_attn.q_proj.weight"], ours["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(original["model.embed_tokens.weight"], ours["model.embed_tokens.weight"])


def test_rslora_and_modules_to_save_match_peft_and_ggufs_agree(rslora_case, tmp_path):
    from transformers import AutoTokenizer

    from wrapper.runtime.models import GgufModel

    _root, adapter = rslora_case
    plan = plan_merge(tiny_qwen2_dir(), adapter)
    assert not isinstance(plan, str), plan
    assert plan.use_rslora and plan.targets["model.norm.weight"].replacement
    reference_model = peft_merged(adapter)
    ours = streamed(adapter, tmp_path / "ours")
    assert_same_as_peft(ours, reference_model.state_dict())
    base_norm = torch.ones(256, dtype=torch.bfloat16)
    assert not torch.equal(ours["model.norm.weight"], base_norm)  # the saved copy replaced the base's

    peft_dir = tmp_path / "peft"
    reference_model.save_pretrained(peft_dir)
    AutoTokenizer.from_pretrained(tiny_qwen2_dir()).save_pretrained(peft_dir)
    tokens = {}
    for label, model_dir in (("ours", tmp_path / "ours"), ("peft", peft_dir)):
        f16 = tmp_path / f"{label}-f16.gguf"
        done = convert_hf_to_gguf(model_dir, f16)
        assert done.ok, done.output[-2000:]
        q4 = tmp_path / f"{label}-q4_k_m.gguf"
        quantize_gguf(f16, q4)
        tokens[label] = []
        for path in (f16, q4):
            model = GgufModel(path)
            try:
                tokens[label].append(model.greedy([9707, 11, 1879, 0, 576, 6722, 315], stop_ids=set(), max_tokens=24))
            finally:
                model.close()
    assert tokens["ours"] == tokens["peft"]
    assert all(len(t) == 24 for t in tokens["ours"])


def gguf_tensor_bytes(path: Path) -> dict[str, tuple[str, bytes]]:
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, bytes(t.data.tobytes())) for t in GGUFReader(path).tensors}


def test_f16_stored_merge_is_peft_rounded_and_converts_to_the_same_gguf(rslora_case, tmp_path):
    """The default storage (f16) holds PEFT's bf16 values cast as the converter casts them:
    the f16 GGUFs made from it and from the bf16 merge are identical, tensor for tensor."""
    import json

    _root, adapter = rslora_case
    in_base = streamed(adapter, tmp_path / "bf16")
    in_f16 = streamed(adapter, tmp_path / "f16", weights_dtype="f16")
    assert set(in_f16) == set(in_base)
    for name, tensor in in_base.items():
        expected = torch.float16 if tensor.dim() >= 2 else torch.bfloat16
        assert in_f16[name].dtype == expected, name
        assert torch.equal(in_f16[name], tensor.to(expected)), name
    assert_same_as_peft({n: t.to(torch.bfloat16) for n, t in in_f16.items()}, peft_merged(adapter).state_dict())
    # config.json keeps the base's dtype: transformers loads the same bf16 values back
    assert json.loads((tmp_path / "f16" / "config.json").read_text(encoding="utf-8"))["dtype"] == "bfloat16"

    ggufs = {}
    for label in ("bf16", "f16"):
        done = convert_hf_to_gguf(tmp_path / label, tmp_path / f"{label}.gguf")
        assert done.ok, done.output[-2000:]
        ggufs[label] = gguf_tensor_bytes(tmp_path / f"{label}.gguf")
    assert ggufs["f16"].keys() == ggufs["bf16"].keys() and len(ggufs["f16"]) > 20
    for name, (kind, data) in ggufs["bf16"].items():
        assert ggufs["f16"][name] == (kind, data), name


def test_a_weight_beyond_float16_range_stops_the_f16_merge(tmp_path):
    from wrapper.core.errors import FtwError
    from wrapper.export.merge import _store

    assert _store(torch.tensor([[1.5, -60000.0]], dtype=torch.bfloat16), "w", "F16").dtype == torch.float16
    with pytest.raises(FtwError, match="beyond float16's range.*--weights-dtype base.*--outtype bf16"):
        _store(torch.tensor([[1.5, 70000.0]], dtype=torch.bfloat16), "model.layers.3.mlp.down_proj.weight", "F16")


def test_dora_falls_back_with_a_reason(tmp_path):
    adapter = make_adapter(tmp_path / "dora", use_dora=True, target_modules=["q_proj", "v_proj"])
    with pytest.raises(NotStreamable, match="use_dora"):
        plan_merge(tiny_qwen2_dir(), adapter)


def test_adapted_tied_embedding_falls_back(tmp_path):
    adapter = make_adapter(tmp_path / "emb", target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(NotStreamable, match="ties its input and output embeddings"):
        plan_merge(tiny_qwen2_dir(), adapter)


def test_unknown_adapter_tensor_falls_back(tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = make_adapter(tmp_path / "odd", target_modules=["q_proj"])
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(256)
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(NotStreamable, match="unrecognised adapter tensor"):
        plan_merge(tiny_qwen2_dir(), adapter)


@pytest.mark.parametrize("cut", ["adapter", "base"])
def test_truncated_weights_are_a_clear_error_not_zeros(tmp_path, cut):
    """A safetensors file cut short used to read as zeros past its end and merge 'successfully'."""
    from wrapper.core.errors import FtwError

    adapter = make_adapter(tmp_path / "adapter")
    base = tiny_qwen2_dir()
    if cut == "base":
        base = tmp_path / "base"
        shutil.copytree(tiny_qwen2_dir(), base)
    victim = adapter / "adapter_model.safetensors" if cut == "adapter" else base / "model.safetensors"
    os.truncate(victim, victim.stat().st_size - 1000)
    with pytest.raises(FtwError, match="damaged or truncated") as raised:
        plan_merge(base, adapter)
    assert str(victim) in str(raised.value) and "ftw train --force" in str(raised.value)
