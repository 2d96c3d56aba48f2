"""ftw: fine-tune with LLaMA-Factory, convert with llama.cpp, serve with Ollama / LM Studio.

The packages are layers (ARCHITECTURE.md): core < config < prompts < data < the four stages
(train, export, gguf, serve) < eval < commands < cli.
"""
