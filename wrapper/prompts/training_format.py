"""The training format of a run: LLaMA-Factory's template, the run's tokenizer and its default system.

One object for every place that lays a conversation out as training did: as token ids for a
model to answer (smoke, chat, eval), as text for the serving-fidelity checks and llama.cpp's
tools (the importance matrix's calibration rows, quantization loss), and as token counts (data).
The run's default system prompt is resolved here, once, the way LLaMA-Factory's
DataArguments.default_system sets it for training: the recipe's `system` when it has one (an
empty one means none), else the template's own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path


class TextTokenizer:
    """Stands in for the tokenizer inside LLaMA-Factory's Template._encode: each text piece
    is its own "id", and bos/eos are the real tokenizer's tokens (after LLaMA-Factory's
    fix_special_tokens), so the template returns the pieces of the training text."""

    def __init__(self, tokenizer):
        self.bos_token_id = tokenizer.bos_token if tokenizer.bos_token_id is not None else None
        self.eos_token_id = tokenizer.eos_token if tokenizer.eos_token_id is not None else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return [text]

    def convert_tokens_to_ids(self, token: str) -> str:
        return token


@dataclass(frozen=True, eq=False)  # one per tokenizer and template: compared and hashed as itself
class TrainingFormat:
    """LLaMA-Factory's template for a run with its tokenizer. Turns are LLaMA-Factory messages
    ({"role": "user"|"assistant"|..., "content": ...}); `system` is a row's own system prompt,
    None for the run's default."""

    name: str  # LLaMA-Factory's template name
    tokenizer: object
    template: object  # this format's own copy of llamafactory's Template, default_system the run's
    # len(tokenizer) before LLaMA-Factory fixed it for the template: an id at or past it is a
    # token the template added (a stop word the base vocabulary doesn't have).
    base_vocab_size: int | None = None

    @property
    def default_system(self) -> str:
        return self.template.default_system

    @property
    def reasoning(self) -> bool:
        from llamafactory.data.template import ReasoningTemplate

        return isinstance(self.template, ReasoningTemplate)

    # ---- token ids ---------------------------------------------------------------------

    def encode(self, turns: list[dict], system: str | None = None) -> list[int]:
        """The prompt for the reply to the last of `turns` (user last), as training built it."""
        return self.encode_answer(turns, "", system)[0]

    def encode_answer(self, turns: list[dict], answer: str, system: str | None = None) -> tuple[list[int], list[int]]:
        """The prompt for the reply to the last of `turns`, and `answer` as that reply with its end token."""
        messages = turns + [{"role": "assistant", "content": answer}]
        prompt, response = self.template.encode_oneturn(self.tokenizer, messages, system)
        return list(prompt), list(response)

    def prompt_ids(self, user: str) -> list[int]:
        return self.encode([{"role": "user", "content": user}])

    def stop_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        for word in self.template.stop_words:
            token_id = self.tokenizer.convert_tokens_to_ids(word)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return {i for i in ids if i is not None}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- counts ------------------------------------------------------------------------

    def count(self, text: str) -> int:
        """Tokens of `text` as it stands (no bos/eos added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_conversation(self, turns: list[dict], system: str | None = None, tools: str | None = None) -> int:
        """Tokens of a whole conversation as training encodes it, every answer with its end token."""
        pairs = self.template.encode_multiturn(self.tokenizer, turns, system, tools)
        return sum(len(p) + len(r) for p, r in pairs) + (1 if self.template.efficient_eos else 0)

    # ---- text --------------------------------------------------------------------------

    def prompt_text(self, messages: list[dict], enable_thinking: bool = True) -> str:
        """The text LLaMA-Factory encodes as the prompt for the reply to the last user message;
        `messages` may start with a system message and carry an answer's "thinking"."""
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = [for_training(m) for m in messages if m["role"] != "system"]
        template = copy.copy(self.template)  # enable_thinking is set per call, not on the format
        template.enable_thinking = enable_thinking
        pieces, _ = template.encode_oneturn(
            TextTokenizer(self.tokenizer), turns + [{"role": "assistant", "content": ""}], system
        )
        return "".join(pieces)

    def render_text(self, turns: list[dict], system: str | None = None) -> str:
        """The whole conversation (ending with an answer) as training lays it out, every answer with its end token."""
        pairs = self.template.encode_multiturn(TextTokenizer(self.tokenizer), turns, system)
        return "".join("".join(prompt) + "".join(answer) for prompt, answer in pairs)

    def stop_words(self) -> list[str]:
        """Every end-of-turn marker: the template's stop words and the tokenizer's eos."""
        stops = list(self.template.stop_words)
        if self.tokenizer.eos_token and self.tokenizer.eos_token not in stops:
            stops.append(self.tokenizer.eos_token)
        return stops


def training_format(tokenizer_dir: str | Path, template_name: str, system: str | None) -> TrainingFormat:
    """The run's training format: its tokenizer, LLaMA-Factory's `template_name` fixed for it, and
    `system` (the recipe's, None for the template's own) as the default system prompt."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=True)
    base_vocab_size = len(tokenizer)
    # LLaMA-Factory hands out its one Template object per name: the run's system goes on a copy.
    template = copy.copy(get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name)))
    if system is not None:
        template.default_system = system
    return TrainingFormat(template_name, tokenizer, template, base_vocab_size)


def for_training(message: dict) -> dict:
    """A message as LLaMA-Factory's rows carry it: an answer's thinking inline, before its content."""
    content = message["content"]
    if message.get("thinking"):
        content = f"<think>\n{message['thinking']}\n</think>\n\n{content}"
    return {"role": message["role"], "content": content}
