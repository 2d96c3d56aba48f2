"""What `ftw setup` runs: the llama.cpp tree and the demo's offline base model."""
