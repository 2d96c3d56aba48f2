"""`ftw publish`: a run's quantized GGUF(s), Ollama's Hub files and a model card, staged in
runs/RUN/publish and uploaded to a Hugging Face model repository."""
