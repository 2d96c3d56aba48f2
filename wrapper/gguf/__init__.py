"""GGUF: llama.cpp's converter, the training format as the file's chat template, quantization."""
