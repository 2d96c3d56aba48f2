"""The training format: LLaMA-Factory's chat templates as token ids, and the checks that the
GGUF's chat template and the Ollama TEMPLATE render exactly the prompt training used."""
