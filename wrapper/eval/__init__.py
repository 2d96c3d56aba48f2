"""Evaluation: base vs merged vs quantized on control, validation and general-knowledge prompts."""
