"""Serving: the Ollama Modelfile, LM Studio, chat and smoke checks, greedy answers from a GGUF."""
