"""Export: the LoRA merged into the full-precision base, streamed one tensor at a time
(or by LLaMA-Factory where that can't be exact)."""
