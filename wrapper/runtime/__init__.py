"""Models in this process: llama.cpp on a GGUF (llama-cpp-python) and a HF folder in transformers.

Below the stages, so serve, synth and eval load a model the same way: quiet, seeded, and with
threads counted by core/cpu.cpu_jobs (the cores this process may use, not the machine's)."""
