"""Serving fidelity: the prompt a model was trained on is the prompt its servers send.

Three renderings of the same conversation are compared, byte for byte:

- training: LLaMA-Factory's own Template.encode_oneturn (the code that built the
  training prompts and that `ftw smoke` uses), run with a tokenizer whose "ids" are the
  text pieces, so it returns the text instead of ids (TrainingFormat.prompt_text,
  wrapper/prompts/training_format.py);
- Ollama: the Modelfile TEMPLATE rendered by Go's text/template with the values
  Ollama's chat endpoint passes (wrapper/prompts/gorender.py), after Ollama's BOS;
- llama.cpp / LM Studio: the GGUF's tokenizer.chat_template rendered by
  llama-cpp-python's Jinja2ChatFormatter (jinja2, the same globals llama.cpp's server
  offers: bos/eos tokens, raise_exception, strftime_now, add_generation_prompt=True).

The conversations cover no system prompt, a system prompt, several turns, non-ASCII
text, an empty user message, and (for reasoning templates) an earlier answer that
carries its <think> part. Each is rendered with the client's default and with
thinking switched off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.core.errors import FtwError
from wrapper.core.paths import TEMPLATES_DIR
from wrapper.prompts import gorender
from wrapper.prompts.training_format import TrainingFormat, for_training

# LLaMA-Factory template -> the family of files that render it for serving:
# templates/ollama/FAMILY.gotmpl (Ollama) and templates/gguf/FAMILY.jinja (the GGUF).
SERVING_FAMILIES = {
    "chatml": "chatml",
    "qwen": "chatml",
    "qwen3_nothink": "chatml",
    "smollm": "chatml",
    "smollm2": "chatml",
    "qwen3": "qwen3",
    "llama3": "llama3",
    "mistral": "mistral",
}
SYSTEM_LINE = "{%- set default_system = %s -%}\n"

CONVERSATIONS: dict[str, list[dict]] = {
    "no system prompt": [
        {"role": "user", "content": "Who guards the Amber Gate of Veloria?"},
    ],
    "a system prompt": [
        {"role": "system", "content": "You are the chronicler of Veloria. Answer in one sentence."},
        {"role": "user", "content": "What is the capital of Veloria?"},
    ],
    "several turns": [
        {"role": "user", "content": "Name the river that crosses Ostmere."},
        {"role": "assistant", "content": "The river Calde crosses Ostmere."},
        {"role": "user", "content": "And who founded the city?"},
        {"role": "assistant", "content": "Ostmere was founded by Ila Venn."},
        {"role": "user", "content": "When?"},
    ],
    "non-ASCII text": [
        {"role": "system", "content": "Ты — Сайга, русскоязычный автоматический ассистент. «Ёлки» №5 — ok."},
        {"role": "user", "content": "Как зовут дракона Северных гор? 🐉 東京\u00a0и\u200bещё"},
        {"role": "assistant", "content": "Дракона зовут Мирогаст. ✓"},
        {"role": "user", "content": "Из чего куют мечи стражей Велории?"},
    ],
    "an empty user message": [
        {"role": "user", "content": ""},
    ],
    "surrounding whitespace": [
        {"role": "user", "content": "  two leading spaces, a trailing newline\n"},
        {"role": "assistant", "content": " answer with a leading space "},
        {"role": "user", "content": "\tand a tab"},
    ],
}
# An earlier answer with its reasoning. Each client hands it back its own way: Ollama
# (thinking model) as content + thinking, LLaMA-Factory and llama.cpp clients inline.
REASONING_CONVERSATIONS: dict[str, list[dict]] = {
    "an earlier answer with thinking": [
        {"role": "user", "content": "What do Veyran farmers grow?"},
        {"role": "assistant", "content": "Veyran farmers grow blue barley.", "thinking": "The lore says blue barley."},
        {"role": "user", "content": "Why blue?"},
    ],
}


@dataclass(frozen=True)
class Mode:
    """One way a client can ask: what LLaMA-Factory, Ollama and the GGUF template are told."""

    name: str
    enable_thinking: bool  # LLaMA-Factory's enable_thinking
    ollama_think: bool | None  # the request's "think"; None = not sent
    jinja_thinking: bool | None  # enable_thinking passed to the chat template; None = not passed


MODES = (Mode("client default", True, None, None), Mode("thinking off", False, False, False))


@dataclass
class Mismatch:
    conversation: str
    mode: str
    renderer: str
    expected: str
    got: str | None
    error: str | None = None

    def describe(self) -> str:
        where = f"{self.renderer}, '{self.conversation}', {self.mode}"
        if self.error:
            return f"{where}: {self.error}"
        return f"{where}: {first_difference(self.expected, self.got or '')}"


def first_difference(expected: str, got: str, context: int = 40) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    start = max(0, at - context)
    return (
        f"differs at character {at}: training has {expected[start : at + context]!r}, "
        f"this renders {got[start : at + context]!r}"
    )


def for_ollama(message: dict, thinking_capable: bool) -> dict:
    # A thinking model's answer comes back from Ollama split; any other keeps it inline.
    if thinking_capable:
        return {"role": message["role"], "content": message["content"], "thinking": message.get("thinking", "")}
    return for_training(message)


def conversations_for(fmt: TrainingFormat) -> dict[str, list[dict]]:
    return {**CONVERSATIONS, **(REASONING_CONVERSATIONS if fmt.reasoning else {})}


# ---- the GGUF side -------------------------------------------------------------------


@dataclass
class GgufChat:
    """What llama.cpp reads from a GGUF to build a chat prompt."""

    chat_template: str | None
    bos: str
    eos: str
    add_bos: bool

    @classmethod
    def read(cls, path: Path) -> GgufChat:
        from llama_cpp import Llama
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):  # llama.cpp logs a context warning even when quiet
            llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            model = llm._model
            bos = model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
            eos = model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
            return cls(llm.metadata.get("tokenizer.chat_template"), bos, eos, bool(model.add_bos_token()))
        finally:
            llm.close()

    def render(self, messages: list[dict], enable_thinking: bool | None, template: str | None = None) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = template if template is not None else self.chat_template
        if template is None:
            raise FtwError("the GGUF has no tokenizer.chat_template")
        formatter = Jinja2ChatFormatter(template=template, eos_token=self.eos, bos_token=self.bos)
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        return formatter(messages=[for_training(m) for m in messages], **extra).prompt

    def server_input(self, rendered: str) -> str:
        """llama.cpp's server drops a leading BOS text from the rendered prompt and lets the
        tokenizer add BOS when the model asks for one; llama-cpp-python sends it as is."""
        if self.add_bos and self.bos:
            return self.bos + rendered.removeprefix(self.bos)
        return rendered


def family_of(template_name: str) -> str | None:
    return SERVING_FAMILIES.get(template_name)


def embedded_template(template_name: str, default_system: str) -> str | None:
    """The Jinja chat template ftw writes into a GGUF for this training template, or None."""
    family = family_of(template_name)
    if family is None:
        return None
    body = (TEMPLATES_DIR / "gguf" / f"{family}.jinja").read_text(encoding="utf-8")
    # A JSON string (non-ASCII kept as is) is a valid Jinja string literal: \" \\ \n \t escapes.
    return SYSTEM_LINE.replace("%s", json.dumps(default_system, ensure_ascii=False)) + body


def ollama_template(template_name: str) -> str | None:
    family = family_of(template_name)
    if family is None:
        return None
    return (TEMPLATES_DIR / "ollama" / f"{family}.gotmpl").read_text(encoding="utf-8").rstrip("\n")


def _lf_generated(fmt: TrainingFormat, method: str) -> str | None:
    try:
        return getattr(fmt.template, method)(fmt.tokenizer)
    except ValueError:  # slots LLaMA-Factory can't express as a template
        return None


def jinja_candidates(fmt: TrainingFormat) -> list[tuple[str, str]]:
    """Chat templates to try for the GGUF, best first: ftw's checked file for the family, then the one
    LLaMA-Factory generates from the template's slots (used only where the check passes)."""
    found = [(f"templates/gguf/{family_of(fmt.name)}.jinja", embedded_template(fmt.name, fmt.default_system))]
    found.append(("LLaMA-Factory's generated chat template", _lf_generated(fmt, "_get_jinja_template")))
    return [(label, text) for label, text in found if text]


def ollama_candidates(fmt: TrainingFormat) -> list[tuple[str, str]]:
    found = [(f"templates/ollama/{family_of(fmt.name)}.gotmpl", ollama_template(fmt.name))]
    found.append(("LLaMA-Factory's generated Ollama template", _lf_generated(fmt, "_get_ollama_template")))
    return [(label, text) for label, text in found if text]


# ---- comparisons ---------------------------------------------------------------------


@dataclass
class Report:
    checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.mismatches

    def summary(self, limit: int = 3) -> str:
        lines = [m.describe() for m in self.mismatches[:limit]]
        more = len(self.mismatches) - limit
        return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def expected_prompts(fmt: TrainingFormat) -> dict[tuple[str, str], str]:
    return {
        (name, mode.name): fmt.prompt_text(messages, mode.enable_thinking)
        for name, messages in conversations_for(fmt).items()
        for mode in MODES
    }


def check_gguf_template(fmt: TrainingFormat, gguf: GgufChat, template: str | None = None) -> Report:
    """Does the chat template (the GGUF's own unless given) render the training prompts?"""
    report = Report()
    expected = expected_prompts(fmt)
    for name, messages in conversations_for(fmt).items():
        for mode in MODES:
            want = expected[(name, mode.name)]
            report.checked += 1
            try:
                rendered = gguf.render(messages, mode.jinja_thinking, template)
            except Exception as exc:  # noqa: BLE001 - a template may raise_exception() or fail in jinja on any shape
                report.mismatches.append(
                    Mismatch(name, mode.name, "GGUF chat template", want, None, f"the template failed: {exc}")
                )
                continue
            for renderer, got in (
                ("GGUF chat template (llama-cpp-python)", rendered),
                ("GGUF chat template (llama.cpp server)", gguf.server_input(rendered)),
            ):
                if got != want:
                    report.mismatches.append(Mismatch(name, mode.name, renderer, want, got))
                    break
    return report


def check_ollama_template(fmt: TrainingFormat, go_template: str, modelfile_system: str, gguf: GgufChat) -> Report:
    """Does Ollama, with this TEMPLATE and SYSTEM, send the training prompts? Ollama's
    tokenizer adds the model's BOS in front of the rendered text when the GGUF asks for one."""
    report = Report()
    expected = expected_prompts(fmt)
    probe = gorender.render(go_template, [], modelfile_system)
    capable = probe["thinking_capable"]
    keys, cases = [], []
    for name, messages in conversations_for(fmt).items():
        for mode in MODES:
            keys.append((name, mode.name))
            cases.append({"messages": [for_ollama(m, capable) for m in messages], "think": mode.ollama_think})
    results = gorender.render(go_template, cases, modelfile_system)["results"]
    bos = gguf.bos if gguf.add_bos else ""
    for (name, mode), result in zip(keys, results):
        want = expected[(name, mode)]
        report.checked += 1
        if "error" in result:
            report.mismatches.append(Mismatch(name, mode, "Ollama TEMPLATE", want, None, result["error"]))
        elif bos + result["prompt"] != want:
            report.mismatches.append(Mismatch(name, mode, "Ollama TEMPLATE", want, bos + result["prompt"]))
    if fmt.reasoning and not capable:
        report.mismatches.append(
            Mismatch(
                "-",
                "-",
                "Ollama TEMPLATE",
                "",
                None,
                "the template does not make Ollama treat the model as a thinking model",
            )
        )
    return report
