"""llama.cpp on a GGUF (`load_llama`), and greedy answers from a GGUF (`GgufModel`) or a HF model
folder (`HfModel`), for smoke, chat, eval and synth's teachers.

For answers in the training format, prompts are encoded by LLaMA-Factory's own template with the run's tokenizer
(wrapper/prompts/training_format.py), and the token ids are given to the model as they are,
so a check asks exactly what training taught, not what some other rendering of the chat
template would send.
"""

from __future__ import annotations

from pathlib import Path

from wrapper.core.cpu import cpu_jobs
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import gguf_problem


def load_llama(path: Path, lora: Path | None = None, seed: int = 0, silent: bool = False, **settings):
    """llama.cpp (llama-cpp-python's Llama) on a GGUF, quiet and seeded; with `lora`, a GGUF adapter
    applied to it at load time. `settings` are Llama's; its threads default to cpu_jobs() (Llama's
    own default counts the machine's cores, not those this process may use). `silent`: also hide
    what llama.cpp prints while loading (a terminal chat)."""
    from llama_cpp import Llama
    from llama_cpp._utils import suppress_stdout_stderr

    settings.setdefault("n_threads", cpu_jobs())
    settings.setdefault("n_threads_batch", settings["n_threads"])
    adapter = {"lora_path": str(lora)} if lora else {}
    # llama.cpp logs a line per adapter tensor (even when quiet) while it applies an adapter
    with suppress_stdout_stderr(disable=not (lora or silent)):
        return Llama(model_path=str(path), seed=seed, verbose=False, **adapter, **settings)


class GgufModel:
    """A GGUF in llama.cpp; with `lora`, a GGUF adapter applied to it at load time (ftw adapter)."""

    def __init__(self, path: Path, n_ctx: int = 1024, n_threads: int | None = None, lora: Path | None = None):
        problem = gguf_problem(path)
        if problem is not None:  # llama.cpp would only say "failed to load model"
            run = Path(path).resolve().parent.parent.name  # runs/RUN/gguf/FILE
            raise FtwError(f"{path} {problem}. Make it again with: ftw gguf --run {run} --force")
        threads = n_threads or cpu_jobs()
        self.llm = load_llama(path, lora, n_ctx=n_ctx, n_threads=threads)

    def greedy(self, prompt_ids: list[int], stop_ids: set[int], max_tokens: int = 48) -> list[int]:
        out: list[int] = []
        self.llm.reset()
        for token in self.llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if token in stop_ids or len(out) >= max_tokens:
                break
            out.append(token)
        return out

    def close(self) -> None:
        self.llm.close()


class HfModel:
    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        # float32 on the CPU: bf16 matmuls there round differently from llama.cpp's f16 path.
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model.eval()

    def greedy(self, prompt_ids: list[int], stop_ids: set[int], max_tokens: int = 48) -> list[int]:
        import torch

        inputs = torch.tensor([prompt_ids])
        with torch.no_grad():
            output = self.model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=sorted(stop_ids),
                pad_token_id=sorted(stop_ids)[0],
            )
        new = output[0, len(prompt_ids) :].tolist()
        for index, token in enumerate(new):
            if token in stop_ids:
                return new[:index]
        return new

    def answer_nll(self, prompt: list[int], response: list[int]) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of `response` after `prompt`, and its token count."""
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        chosen = torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(response)), torch.tensor(response)]
        return float(-chosen.sum()), len(response)
