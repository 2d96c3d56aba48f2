"""The training format as token ids: LLaMA-Factory's template with the run's tokenizer.

Every stage that asks a model something (smoke, chat, eval) or counts tokens (data)
encodes through here, so a prompt is laid out exactly as training laid it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ChatFormat:
    tokenizer: object
    template: object  # llamafactory.data.template.Template
    system: str | None
    # len(tokenizer) before LLaMA-Factory fixed it for the template: an id at or past it is a
    # token the template added (a stop word the base vocabulary doesn't have).
    base_vocab_size: int | None = None

    def prompt_ids(self, user: str) -> list[int]:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": ""}]
        prompt, _ = self.template.encode_oneturn(self.tokenizer, messages, self.system)
        return list(prompt)

    def conversation_ids(self, turns: list[dict]) -> list[int]:
        """The prompt for the reply to the last of `turns` (user/assistant messages, user last),
        as training built it."""
        prompt, _ = self.template.encode_oneturn(
            self.tokenizer, turns + [{"role": "assistant", "content": ""}], self.system
        )
        return list(prompt)

    def stop_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        for word in self.template.stop_words:
            token_id = self.tokenizer.convert_tokens_to_ids(word)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return {i for i in ids if i is not None}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def chat_format(tokenizer_dir: str | Path, template_name: str, system: str | None) -> ChatFormat:
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=True)
    base_vocab_size = len(tokenizer)
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name))
    return ChatFormat(tokenizer, template, system, base_vocab_size)
