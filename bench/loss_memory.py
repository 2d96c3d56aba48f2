"""How many bytes per logit value transformers' causal-LM loss holds at its peak, measured.

The planner counts tokens x vocab x LOSS_BYTES_PER_LOGIT for the loss when Liger's fused
cross-entropy is off. This runs the loss LLaMA-Factory trains with (transformers'
ForCausalLMLoss on bf16 logits) forward and backward in a fresh process per size, and reads
the process's peak resident memory: on the CPU, large tensors are mmap'd and returned on
free, so the peak RSS growth is the peak of live tensors (the GPU allocator keeps the same
tensors alive for the same time). It also runs the loss transformers 4.44 computed inside
LlamaForCausalLM.forward in 2024 (an fp32 copy of the logits, then a shifted contiguous
copy), which published 2024 baselines trained with (bench/planner_published.py).

    .venv/bin/python bench/loss_memory.py    # writes bench/results/loss_memory.json
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

from repo_path import REPO

from wrapper.config.planner import LOSS_BYTES_PER_LOGIT

SIZES = [(1024, 151_936), (2048, 128_256), (4096, 32_000)]  # (tokens, vocab): Qwen3, Llama-3, Llama-2
HIDDEN = 64  # small, so the hidden states and the weight are noise next to the logits

CHILD = """
import resource, sys, torch
from transformers.loss.loss_utils import ForCausalLMLoss
tokens, vocab, hidden = map(int, sys.argv[1:4])
loss_code = sys.argv[4]
torch.manual_seed(0)
h = torch.randn(1, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
w = torch.randn(vocab, hidden, dtype=torch.bfloat16) * 0.02
labels = torch.randint(0, vocab, (1, tokens))


def loss_2024(h):
    logits = torch.nn.functional.linear(h, w).float()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return torch.nn.CrossEntropyLoss()(shift_logits.view(-1, vocab), shift_labels.view(-1)), logits


before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if loss_code == "today":
    loss = ForCausalLMLoss(torch.nn.functional.linear(h, w), labels, vocab_size=vocab)
else:
    loss, logits = loss_2024(h)
    del logits  # the model returned them; the Trainer drops its outputs before backward
loss.backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
LOSSES = {
    "today": "transformers' ForCausalLMLoss (what LLaMA-Factory trains with)",
    "2024": "transformers 4.44's LlamaForCausalLM loss: fp32 copy, shifted contiguous copy, CrossEntropyLoss",
}


def measure(tokens: int, vocab: int, loss: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tokens), str(vocab), str(HIDDEN), loss],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = int(out.stdout.strip().splitlines()[-1])
    return {
        "loss": loss,
        "tokens": tokens,
        "vocab": vocab,
        "peak_bytes": peak,
        "bytes_per_logit": round(peak / (tokens * vocab), 2),
    }


def main() -> None:
    import torch
    import transformers

    cells = [measure(tokens, vocab, loss) for loss in LOSSES for tokens, vocab in SIZES]
    result = {
        "command": ".venv/bin/python bench/loss_memory.py",
        "machine": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "planner_bytes_per_logit": LOSS_BYTES_PER_LOGIT,
        "losses": LOSSES,
        "cells": cells,
    }
    out = REPO / "bench" / "results" / "loss_memory.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for cell in cells:
        print(
            f"{cell['loss']:>5}: {cell['tokens']:>5} tokens x {cell['vocab']:>7} vocab: "
            f"{cell['bytes_per_logit']} bytes per logit"
        )
    print(f"planner: {LOSS_BYTES_PER_LOGIT}; written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
