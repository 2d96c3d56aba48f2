"""The bottom layer: errors, paths, the console, child processes, atomic files, the run manifest
and its RunPlan, the stage contract, and reading model files (safetensors, GGUF) without loading them."""
