"""The tokens that end an answer, and whether llama.cpp ends generation at each of them.

Which tokens end an answer is written in three places that can disagree: LLaMA-Factory's
template (its stop words; the first is the end of turn training taught), the tokenizer's
eos, and generation_config.json's eos_token_id, one id or a list (Qwen3: <|im_end|> and
<|endoftext|>; Llama 3.1: <|end_of_text|>, <|eom_id|> and <|eot_id|>). Ollama stops on the
Modelfile's `PARAMETER stop` texts; llama.cpp (and LM Studio) on the ids it marks
end-of-generation (EOG) when it loads the GGUF: the metadata's eos/eot/eom ids and the
tokens it recognises by their text. A token missing from either lets that server run past
the end of an answer, the way a fine-tune that "never stops" looks to its user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.prompts.training_format import TrainingFormat

TEMPLATE_END = "the training template's end of turn"
TEMPLATE_STOP = "a stop word of the training template"
TOKENIZER_EOS = "the tokenizer's eos"
GENERATION_CONFIG = "generation_config.json's eos_token_id"
GGUF_END_KEYS = {
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
}


@dataclass
class EndToken:
    text: str | None  # None: an id the tokenizer doesn't have
    id: int | None
    sources: list[str] = field(default_factory=list)

    @property
    def ends_generation(self) -> bool:
        """Must a server stop here? Every source but a template's extra stop word (ChatML's <|im_start|>)
        names a token the model ends an answer with."""
        return any(source != TEMPLATE_STOP for source in self.sources)

    @property
    def only_in_generation_config(self) -> bool:
        return self.sources == [GENERATION_CONFIG]

    def describe(self) -> str:
        return f"{self.text or '(no such token)'} (id {self.id})"

    def as_record(self) -> dict:
        return {"token": self.text, "id": self.id, "from": self.sources}


def generation_config_eos_ids(model_dir: Path) -> list[int]:
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return []
    value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    ids = value if isinstance(value, list) else [value]
    return [token_id for token_id in ids if isinstance(token_id, int)]


def end_tokens(fmt: TrainingFormat, model_dir: Path | None = None) -> list[EndToken]:
    """The template's stop words, the tokenizer's eos, then (given the model's folder) the ids its
    generation_config.json lists, each once, with every reason it is there."""
    tokenizer = fmt.tokenizer
    found: dict[object, EndToken] = {}

    def add(text: str | None, token_id: int | None, source: str) -> None:
        end = found.setdefault(text if text is not None else token_id, EndToken(text, token_id))
        if source not in end.sources:
            end.sources.append(source)

    for index, word in enumerate(fmt.template.stop_words):
        add(word, tokenizer.convert_tokens_to_ids(word), TEMPLATE_END if index == 0 else TEMPLATE_STOP)
    if tokenizer.eos_token:
        add(tokenizer.eos_token, tokenizer.eos_token_id, TOKENIZER_EOS)
    for token_id in generation_config_eos_ids(model_dir) if model_dir else []:
        text = tokenizer.convert_ids_to_tokens(token_id) if 0 <= token_id < len(tokenizer) else None
        add(text, token_id, GENERATION_CONFIG)
    return list(found.values())


# ---- the GGUF side -------------------------------------------------------------------


@dataclass
class GgufEnds:
    """What llama.cpp makes of a GGUF's end tokens once loaded: the metadata's ids, and per token
    whether it ends generation (EOG) and is a control token (never printed)."""

    metadata: dict[str, int | None]  # eos/eot/eom -> id, None where the file doesn't set it
    n_vocab: int
    texts: dict[int, str]
    eog: dict[int, bool]
    control: dict[int, bool]

    @classmethod
    def read(cls, path: Path, ids: list[int]) -> GgufEnds:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):  # llama.cpp logs even when quiet
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            vocab = llm._model.vocab
            n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
            known = [i for i in ids if 0 <= i < n_vocab]
            return cls(
                metadata={name: _int_or_none(llm.metadata.get(key)) for name, key in GGUF_END_KEYS.items()},
                n_vocab=n_vocab,
                texts={i: llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8", "replace") for i in known},
                eog={i: bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for i in known},
                control={i: bool(llama_cpp.llama_vocab_is_control(vocab, i)) for i in known},
            )
        finally:
            llm.close()

    def describe_metadata(self) -> str:
        return ", ".join(f"{name} {'-' if value is None else value}" for name, value in self.metadata.items())


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def gguf_end_problems(gguf: GgufEnds, ends: list[EndToken]) -> list[tuple[EndToken, str]]:
    """Each token the model ends an answer with that llama.cpp would not stop at, and why."""
    problems = []
    for end in ends:
        if not end.ends_generation or end.id is None:
            continue
        why = " and ".join(end.sources)
        if end.id >= gguf.n_vocab:
            problems.append((end, f"id {end.id} ({why}) is past the GGUF's {gguf.n_vocab} tokens"))
        elif not gguf.eog[end.id]:
            problems.append(
                (
                    end,
                    f"llama.cpp does not end generation at {gguf.texts[end.id]!r} (id {end.id}, {why}): the GGUF's "
                    f"metadata sets {gguf.describe_metadata()}, and llama.cpp doesn't recognise that text as an end",
                )
            )
        elif end.text is not None and gguf.texts[end.id] != end.text:
            problems.append((end, f"id {end.id} is {gguf.texts[end.id]!r} in the GGUF, {end.text!r} in the tokenizer"))
    return problems


def gguf_end_records(gguf: GgufEnds, ends: list[EndToken]) -> list[dict]:
    """For the manifest: each end token, why it is one, and what llama.cpp makes of it."""
    return [
        {**end.as_record(), "eog": gguf.eog.get(end.id), "control": gguf.control.get(end.id)}
        for end in ends
        if end.id is not None
    ]
