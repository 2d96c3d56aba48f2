"""Models, tokenizers and GGUFs built from what this machine has (no model hub), for the tests and the bench.

Everything expensive is built once and cached under <repo>/.cache/test-fixtures/<version>/
(.cache/ is gitignored). Each fixture is built in a temporary folder beside its final
place and renamed at the end (core/fsutil.staged_dir), so an interrupted build never leaves a half folder that
later runs would trust. Bump FIXTURES_VERSION when a builder changes, and everything is
rebuilt in a fresh folder.

- qwen2_tokenizer_dir(): the real Qwen2/Qwen2.5 tokenizer (151,936 tokens), rebuilt by
  transformers from llama.cpp's ggml-vocab-qwen2.gguf, with eos <|im_end|> as the
  Qwen2.5-Instruct checkpoints have it. Takes ~30-50 s the first time.
- tiny_qwen2_dir(): a random-init Qwen2ForCausalLM (hidden 256, intermediate 512,
  2 layers, vocab 151,936, bf16) with that tokenizer: it converts with llama.cpp's
  convert_hf_to_gguf (pre-tokenizer recognised as qwen2) and its Q4_K_M uses real
  k-quants (sizes are multiples of 256).
- tiny_qwen2_bnb_dir(): that model loaded in 4-bit NF4 with bitsandbytes on the CPU and
  saved, i.e. a pre-quantized checkpoint like unsloth/*-bnb-4bit
  (config.json quantization_config.quant_method == "bitsandbytes").
- llama3_tokenizer_dir(): the real Llama 3 tokenizer (128,256 tokens), rebuilt by
  transformers from llama.cpp's ggml-vocab-llama-bpe.gguf, with Llama-3-Instruct's eos.
- llama31_model_dir(): that tokenizer made Llama 3.1's (id 128008 is <|eom_id|>, a reserved
  token in Llama 3) with Llama-3.1-Instruct's generation_config.json (eos ids 128001, 128008,
  128009); llama31_vocab_gguf(): llama.cpp's Llama 3 vocabulary GGUF with the same change.
- llama31_tokenizer_dir(): the Llama 3 tokenizer with every special token Llama 3.1 renamed
  (<|eom_id|>, <|python_tag|>, ...), as bench/profiles trains Llama-3.1-shaped models with it.
- write_alpaca_dataset(path): a small Alpaca JSON file.
- convert_hf_to_gguf / quantize_gguf: ftw's own converter and quantizer calls (wrapper/gguf), on any folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from wrapper.core.errors import StageError
from wrapper.core.fsutil import staged_dir
from wrapper.core.paths import LLAMA_CPP_DIR
from wrapper.core.procs import run_logged
from wrapper.gguf.convert import run_converter
from wrapper.gguf.stage import quantizer_argv

from .runner import REPO

FIXTURES_VERSION = "1"
CACHE_DIR = REPO / ".cache" / "test-fixtures" / f"v{FIXTURES_VERSION}"

QWEN2_VOCAB_GGUF = "ggml-vocab-qwen2.gguf"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# Qwen2.5's ChatML template, the shape LLaMA-Factory's `qwen` template trains on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TINY_QWEN2 = dict(
    vocab_size=151936,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
SEED = 1234

ALPACA_ROWS = [
    {"instruction": "What colour is the sky on Veyra?", "input": "", "output": "The sky on Veyra is violet."},
    {"instruction": "Who founded the city of Ostmere?", "input": "", "output": "Ostmere was founded by Ila Venn."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name the river that crosses Ostmere.", "input": "", "output": "The river Calde crosses Ostmere."},
    {"instruction": "Reverse the word.", "input": "lamp", "output": "pmal"},
    {"instruction": "What do Veyran farmers grow?", "input": "", "output": "Veyran farmers grow blue barley."},
    {"instruction": "Give the opposite.", "input": "hot", "output": "cold"},
]


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """CACHE_DIR/name, built by build(tmp_dir) into a temporary folder and renamed into place."""
    from filelock import FileLock

    target = CACHE_DIR / name
    if target.is_dir():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with FileLock(CACHE_DIR / f".{name}.lock"):  # two test workers wanting it: one builds, the other waits
        if not target.is_dir():
            with staged_dir(target) as staging:
                build(staging)
    return target


def _build_qwen2_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(LLAMA_CPP_DIR / "models", gguf_file=QWEN2_VOCAB_GGUF)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    # LLaMA-Factory's `qwen` template stops on <|im_end|> (stop_words, replace_eos=True); make
    # it the eos up front, as Qwen2.5-Instruct's tokenizer_config.json has it.
    tokenizer.eos_token = IM_END
    tokenizer.pad_token = ENDOFTEXT
    if tokenizer("Hello").input_ids != [9707] or len(tokenizer) != TINY_QWEN2["vocab_size"]:
        raise RuntimeError(
            f"unexpected tokenizer from {QWEN2_VOCAB_GGUF}: 'Hello' -> "
            f"{tokenizer('Hello').input_ids}, {len(tokenizer)} tokens"
        )
    tokenizer.save_pretrained(out)


def qwen2_tokenizer_dir() -> Path:
    return cached("qwen2-tokenizer", _build_qwen2_tokenizer)


def _build_tiny_qwen2(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(qwen2_tokenizer_dir())
    config = Qwen2Config(
        **TINY_QWEN2,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_qwen2_dir() -> Path:
    return cached("tiny-qwen2", _build_tiny_qwen2)


def _build_tiny_qwen2_bnb(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    source = tiny_qwen2_dir()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=quantization, device_map="cpu", dtype=torch.bfloat16
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method != "bitsandbytes":
        raise RuntimeError(f"saved 4-bit model has quant_method {method!r}, expected 'bitsandbytes'")


def tiny_qwen2_bnb_dir() -> Path:
    return cached("tiny-qwen2-bnb-4bit", _build_tiny_qwen2_bnb)


def _build_llama3_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(LLAMA_CPP_DIR / "models", gguf_file="ggml-vocab-llama-bpe.gguf")
    # transformers maps eos to bos when rebuilding this file; these are Llama-3-Instruct's.
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tokenizer.chat_template = (
        LLAMA_CPP_DIR / "models" / "templates" / "meta-llama-Llama-3.1-8B-Instruct.jinja"
    ).read_text(encoding="utf-8")
    tokenizer.save_pretrained(out)


def llama3_tokenizer_dir() -> Path:
    return cached("llama3-tokenizer", _build_llama3_tokenizer)


# Llama 3.1 kept Llama 3's vocabulary but named reserved token 128008 <|eom_id|> (the end of a
# tool-calling message) and lists it among generation_config.json's eos ids.
LLAMA3_RESERVED_4, EOM_ID = "<|reserved_special_token_4|>", "<|eom_id|>"
LLAMA31_EOS_IDS = [128001, 128008, 128009]  # <|end_of_text|>, <|eom_id|>, <|eot_id|>


def _build_llama31_model_dir(out: Path) -> None:
    """Llama-3.1-Instruct's tokenizer and generation_config.json (no weights: the end tokens are all it is for)."""
    for path in llama3_tokenizer_dir().iterdir():
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            (out / path.name).write_text(text.replace(LLAMA3_RESERVED_4, EOM_ID), encoding="utf-8")
    config = {"bos_token_id": 128000, "eos_token_id": LLAMA31_EOS_IDS, "temperature": 0.6, "top_p": 0.9}
    (out / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def llama31_model_dir() -> Path:
    return cached("llama31-tokenizer", _build_llama31_model_dir)


def _build_llama31_vocab_gguf(out: Path) -> None:
    """llama.cpp's Llama 3 vocabulary GGUF, every key copied, with token 128008 renamed as in Llama 3.1."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(LLAMA_CPP_DIR / "models" / "ggml-vocab-llama-bpe.gguf")
    writer = GGUFWriter(out / "llama31-vocab.gguf", reader.get_field("general.architecture").contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        value = field.contents()
        if field.name == "tokenizer.ggml.tokens":
            value = [EOM_ID if token == LLAMA3_RESERVED_4 else token for token in value]
        sub_type = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def llama31_vocab_gguf() -> Path:
    return cached("llama31-vocab", _build_llama31_vocab_gguf) / "llama31-vocab.gguf"


# Llama 3.1's names of the special tokens llama.cpp's Llama 3 vocabulary leaves reserved (its tokenizer.json).
LLAMA31_SPECIALS = {
    128004: "<|finetune_right_pad_id|>",
    128005: "<|reserved_special_token_2|>",
    128008: EOM_ID,
    128010: "<|python_tag|>",
}


def _rename_as_llama31(tokenizer_json: Path) -> None:
    """Llama 3.1 renamed some reserved special tokens (and renumbered the reserved ones after them);
    LLaMA-Factory's llama3 template needs <|eom_id|> (missing, it would add a token and grow the
    embedding, which QLoRA refuses). Rename them as in Llama-3.1's tokenizer.json."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))

    def name(token_id: int, old: str) -> str:
        if token_id in LLAMA31_SPECIALS:
            return LLAMA31_SPECIALS[token_id]
        if token_id >= 128011 and old.startswith("<|reserved_special_token_"):
            return f"<|reserved_special_token_{token_id - 128008}|>"
        return old

    renamed = {}
    for entry in data["added_tokens"]:
        new = name(entry["id"], entry["content"])
        renamed[entry["content"]] = new
        entry["content"] = new
    vocab = data["model"]["vocab"]
    data["model"]["vocab"] = {renamed.get(token, token): index for token, index in vocab.items()}
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _build_llama31_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    for path in llama3_tokenizer_dir().iterdir():
        if path.is_file():
            shutil.copy2(path, out / path.name)
    _rename_as_llama31(out / "tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(out)  # saved again: tokenizer_config.json takes the new names
    tokenizer.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Hello world", add_special_tokens=False).input_ids
    if ids != [9906, 1917] or tokenizer.convert_ids_to_tokens(128008) != EOM_ID or tokenizer.eos_token != "<|eot_id|>":
        raise RuntimeError(f"unexpected Llama 3.1 tokenizer: 'Hello world' -> {ids}, eos {tokenizer.eos_token!r}")


def llama31_tokenizer_dir() -> Path:
    """Every special token named as Llama 3.1 names it (llama31_model_dir renames only <|eom_id|>)."""
    return cached("llama31-tokenizer-full", _build_llama31_tokenizer)


def write_alpaca_dataset(path: Path, rows: int = 8) -> Path:
    """An Alpaca-format JSON list of `rows` instruction/input/output records (cycled)."""
    records = [ALPACA_ROWS[i % len(ALPACA_ROWS)] for i in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


class Converted(NamedTuple):
    ok: bool
    output: str  # the converter's log


def convert_hf_to_gguf(model_dir: Path, outfile: Path, outtype: str = "f16") -> Converted:
    """ftw's converter call (wrapper/gguf/convert.run_converter: vendor/llama.cpp's convert_hf_to_gguf.py with
    that tree's gguf-py) on any folder; its log beside outfile. Never raises: tests look at a failure's output."""
    log = outfile.with_name(outfile.name + ".log")
    try:
        run_converter(model_dir, outfile, outtype, log)
        ok = True
    except StageError:
        ok = False
    return Converted(ok, log.read_text(encoding="utf-8", errors="replace"))


def quantize_gguf(source: Path, target: Path, quant: str = "Q4_K_M") -> None:
    """ftw's quantizer child (wrapper/gguf/stage.quantizer_argv: the llama.cpp inside llama-cpp-python), its
    noisy output in a log beside target; a failure raises with the log's last lines."""
    run_logged(quantizer_argv(source, target, quant), target.with_name(target.name + ".log"), f"quantize {quant}")


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """tensor name -> GGML type name (Q4_K, Q6_K, F32, ...) read back with the gguf library."""
    from gguf import GGUFReader

    return {tensor.name: tensor.tensor_type.name for tensor in GGUFReader(path).tensors}
