"""Configuration: the recipe and profile schema and loaders, base models, the memory planner, and
what LLaMA-Factory, Ollama and the GPUs here accept."""
