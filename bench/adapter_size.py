"""Benchmark: what a user downloads for a fine-tune of the shipped recipes' models, side by side:
the LoRA as a GGUF adapter (`ftw gguf --adapter`) against the merged model as Q4_K_M (`ftw gguf`).

For each model in recipes/models.yaml that a shipped recipe trains (its config.json there) and the
recipe's LoRA settings (rank, alpha, target `all`), a PEFT adapter with the exact tensor names and
shapes LLaMA-Factory saves is written with random values (sizes and conversion time depend on shapes
only), then converted with the vendored llama.cpp's convert_lora_to_gguf.py, exactly as
wrapper/gguf/adapter.py runs it (`--base` = a folder with only config.json: the converter reads no
base weights), to f16 and q8_0. The adapter GGUFs' sizes are measured. The merged Q4_K_M is the
planner's estimate (wrapper/config/planner.gguf_sizes_gb: parameters x Q4_K_M's bits per weight),
held against a published Q4_K_M file where one is cited (PUBLISHED_Q4_K_M).

    .venv/bin/python bench/adapter_size.py          # ~1 min on 2 cores; writes bench/results/adapter_size.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repo_path import REPO

RESULTS = REPO / "bench" / "results" / "adapter_size.json"
RECIPES = ("qwen3-8b", "llama31-8b", "qwen3-4b")
OUTTYPES = ("f16", "q8_0")
# A Q4_K_M file size as listed on the Hub, to check the planner's estimate against (GB = 1e9 bytes);
# bartowski/Qwen_Qwen3-4B-GGUF's README table: "Qwen3-4B-Q4_K_M.gguf | Q4_K_M | 2.50GB".
PUBLISHED_Q4_K_M = {"Qwen/Qwen3-4B": (2.50e9, "huggingface.co/bartowski/Qwen_Qwen3-4B-GGUF, Qwen3-4B-Q4_K_M.gguf")}
# LLaMA-Factory's `lora_target: all` on these models: every linear layer of the decoder.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def recipe_lora(name: str) -> tuple[str, int, int]:
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text(encoding="utf-8"))
    train = recipe.get("train", {})
    return recipe["model"]["base"], int(train["lora_rank"]), int(train["lora_alpha"])


def write_adapter(folder: Path, config: dict, rank: int, alpha: int) -> int:
    """adapter_model.safetensors + adapter_config.json as PEFT writes them; returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    from wrapper.config.planner import ModelShape

    shape = ModelShape.from_config(config)
    generator = torch.Generator().manual_seed(0)
    tensors, params = {}, 0
    for layer in range(shape.layers):
        for target, (fan_in, fan_out) in zip(TARGETS, shape.linear_shapes(), strict=True):
            module = "self_attn" if target.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{module}.{target}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator).to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator).to(torch.bfloat16)
            params += rank * (fan_in + fan_out)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(TARGETS),
        "base_model_name_or_path": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config), encoding="utf-8")
    return params


def convert(adapter: Path, base_config: Path, outtype: str, out: Path, log: Path) -> float:
    from wrapper.core.paths import LLAMA_CPP_DIR

    argv = [sys.executable, str(LLAMA_CPP_DIR / "convert_lora_to_gguf.py"), "--base", str(base_config)]
    argv += ["--outtype", outtype, "--outfile", str(out), str(adapter)]
    env = dict(os.environ, PYTHONPATH=str(LLAMA_CPP_DIR / "gguf-py"))
    started = time.perf_counter()
    with log.open("ab") as handle:
        result = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"convert_lora_to_gguf.py exited {result.returncode}; log: {log}")
    return round(time.perf_counter() - started, 1)


def measure(recipe: str, work: Path) -> dict:
    from wrapper.config.models import known_configs
    from wrapper.config.planner import GIB, ModelShape, gguf_sizes_gb

    base, rank, alpha = recipe_lora(recipe)
    config = known_configs()[base]
    base_dir = work / recipe / "base"
    base_dir.mkdir(parents=True)
    (base_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    params = write_adapter(work / recipe / "adapter", config, rank, alpha)
    row = {"recipe": recipe, "base": base, "lora_rank": rank, "lora_target": "all", "lora_params": params}
    for outtype in OUTTYPES:
        out = work / recipe / f"{recipe}-lora-{outtype}.gguf"
        seconds = convert(work / recipe / "adapter", base_dir, outtype, out, work / "convert.log")
        row[f"adapter_{outtype}_bytes"] = out.stat().st_size
        row[f"adapter_{outtype}_seconds"] = seconds
        out.unlink()
    row["merged_q4_k_m_bytes_planner"] = round(gguf_sizes_gb(ModelShape.from_config(config))[1] * GIB)
    if base in PUBLISHED_Q4_K_M:
        row["merged_q4_k_m_bytes_published"], row["published_source"] = PUBLISHED_Q4_K_M[base]
    row["q4_k_m_over_adapter_f16"] = round(row["merged_q4_k_m_bytes_planner"] / row["adapter_f16_bytes"], 1)
    return row


def published(row: dict) -> str:
    return f"; {row['merged_q4_k_m_bytes_published'] / 1e9:.2f} GB" if "published_source" in row else ""


def table(rows: list[dict]) -> str:
    lines = [
        "| recipe (LoRA r, target all) | adapter GGUF f16 | adapter GGUF q8_0 "
        "| merged Q4_K_M (planner; published) | Q4_K_M ÷ adapter f16 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['recipe']} (r{row['lora_rank']}, {row['lora_params'] / 1e6:.1f} M params) "
            f"| {row['adapter_f16_bytes'] / 1e6:.0f} MB ({row['adapter_f16_seconds']} s) "
            f"| {row['adapter_q8_0_bytes'] / 1e6:.0f} MB ({row['adapter_q8_0_seconds']} s) "
            f"| {row['merged_q4_k_m_bytes_planner'] / 1e9:.2f} GB{published(row)} "
            f"| {row['q4_k_m_over_adapter_f16']}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftw-adapter-size-") as work:
        rows = [measure(recipe, Path(work)) for recipe in RECIPES]
    result = {
        "command": "python bench/adapter_size.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
