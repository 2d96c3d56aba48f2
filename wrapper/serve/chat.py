"""`ftw chat`: talk to the run's GGUF in the terminal, in the format it was trained on.

The GGUF runs in llama.cpp (llama-cpp-python); each prompt, history included, is
encoded by LLaMA-Factory's template with the run's tokenizer (wrapper/prompts/training_format.py), so
the model sees exactly the token layout of training, whatever chat template the GGUF
carries. Sampling follows the recipe's ollama.parameters, with Ollama's defaults for
the ones it doesn't set. Tokens are printed as they come.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path

from wrapper.core import artifacts, manifest
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import DEFAULT_QUANT
from wrapper.core.ui import spinner
from wrapper.prompts.training_format import TrainingFormat, training_format
from wrapper.runtime.models import load_llama


@dataclass
class Sampling:
    """Ollama's defaults, overridden by the recipe's ollama.parameters."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    seed: int = -1
    num_ctx: int = 4096
    num_predict: int = -1
    stop: list[str] = field(default_factory=list)  # the recipe's own stop strings; end-of-turn tokens always stop

    @classmethod
    def from_parameters(cls, parameters: dict, temperature: float | None) -> Sampling:
        known = {k: v for k, v in parameters.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("stop"), str):
            known["stop"] = [known["stop"]]
        sampling = cls(**known)
        if temperature is not None:
            sampling.temperature = temperature
        return sampling


class Chat:
    def __init__(self, gguf: Path, fmt: TrainingFormat, sampling: Sampling):
        self.fmt = fmt
        self.sampling = sampling
        seed = sampling.seed if sampling.seed >= 0 else 0xFFFFFFFF  # llama.cpp's "a random seed"
        self.llm = load_llama(gguf, seed=seed, silent=True, n_ctx=sampling.num_ctx)
        self.stop_ids = fmt.stop_ids()
        self.turns: list[dict] = []

    def is_stop(self, token: int) -> bool:
        import llama_cpp

        return token in self.stop_ids or llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token)

    def reply(self, user: str, write=None) -> str:
        """Generate the answer to `user`, passing each decoded piece to write(); remember both turns."""
        s = self.sampling
        turns = self.turns + [{"role": "user", "content": user}]
        prompt = self.fmt.encode(turns)
        room = self.llm.n_ctx() - len(prompt)
        if room <= 0:
            raise FtwError(
                f"the conversation ({len(prompt)} tokens) fills the context of {self.llm.n_ctx()}; /reset it"
            )
        limit = room if s.num_predict < 0 else min(room, s.num_predict)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
        text, shown = "", 0
        for count, token in enumerate(
            self.llm.generate(
                prompt, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, temp=s.temperature, repeat_penalty=s.repeat_penalty
            )
        ):
            if self.is_stop(token) or count >= limit:
                break
            text += decoder.decode(self.llm.detokenize([token]))
            hits = [text.index(stop) for stop in s.stop if stop in text]
            if hits:  # as in Ollama, a stop string and what follows it are not part of the answer
                text = text[: min(hits)]
                break
            # Hold back an ending that may be the start of a stop string, show the rest now.
            ready = len(text) - held_back(text, s.stop)
            if write and ready > shown:
                write(text[shown:ready])
                shown = ready
        if write and len(text) > shown:
            write(text[shown:])
        self.turns = turns + [{"role": "assistant", "content": text}]
        return text

    def close(self) -> None:
        self.llm.close()


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest ending of `text` that begins some stop string."""
    return max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)


def open_chat(run_dir: Path, quant: str = DEFAULT_QUANT, temperature: float | None = None) -> Chat:
    """The run's quantized GGUF loaded in llama.cpp, prompted in its training format."""
    plan = manifest.plan_of(run_dir)
    gguf = manifest.artifact(run_dir, artifacts.gguf(quant))
    merged = manifest.artifact(run_dir, artifacts.MERGED)
    with spinner(f"loading {gguf.name}"):
        return Chat(
            gguf,
            training_format(merged, plan.template, plan.system),
            Sampling.from_parameters(plan.ollama_parameters, temperature),
        )
