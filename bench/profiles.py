"""Proof on a real GPU: does every GPU profile fit, how fast is it, and is the planner right?

For each (model, profile) cell this script, with nothing downloaded:

1. builds a model with the model's real architecture (recipes/models.yaml) and random bf16
   weights, and its real tokenizer rebuilt from llama.cpp's vocabulary GGUFs (shapes are
   what cost memory and time; the values of the weights don't);
2. renders the shipped recipe (a copy in the cache with model.base swapped for that
   folder, nothing else changed) through the real `ftw render --profile P`, on a fixed,
   seeded synthetic Alpaca dataset whose every row is truncated at the cutoff (2048);
3. trains a fixed number of steps in a child process that first caps PyTorch's allocator
   at the profile's memory (torch.cuda.set_per_process_memory_fraction, budget =
   memory_gb GiB) and then calls LLaMA-Factory's run_exp in-process, which is what
   `llamafactory-cli train train.yaml` does on one GPU;
4. does the same for LLaMA-Factory's own QLoRA example (examples/train_lora/
   qwen3_lora_sft_otfq.yaml) with the same model, data, cutoff, cap and steps: the baseline;
5. records per cell: fits or OOM, peak allocated and reserved memory, tokens/s after a
   warm-up step, MFU (planner.train_flops_per_token over this GPU's dense bf16 peak), the
   planner's peak estimate and its error, whether the render offloaded checkpoints to host
   RAM (`offload_checkpoints`, the train.yaml's use_unsloth_gc) and the planner's host-RAM
   estimate for them (`host_ram_gb`), and writes bench/results/profiles-<gpu>.json (merged
   with cells already there), with the command that made them.

`--kinds max-context` adds, per (model, profile), the planner's longest context: the longest
cutoff_len that `ftw plan --max-context` (plan_report.max_context_report) says fits at
micro-batch 1 with checkpoints offloaded, rendered at that cutoff with use_unsloth_gc and
trained for a few steps (kind max_context: must fit), and again at +10% (kind
max_context_plus10: may not, informational). The 8 GB offload cells are the ftw cells on
rtx3070: there the planner renders both 8B models with use_unsloth_gc.

A fresh process loads an 8B model for every cell, so a GPU run is split into slots of at
most ~9 minutes with `--part K/N` (cells in a fixed order, cut where the estimated times,
preparing the models included, balance). `--list` prints the cells, their estimated seconds
and their parts without a GPU. On an NVIDIA machine, one 10-minute slot per command:
    python bench/profiles.py --kinds ftw example --part 1/4 --time-budget 540
    python bench/profiles.py --kinds ftw example --part 2/4 --time-budget 540
    python bench/profiles.py --kinds ftw example --part 3/4 --time-budget 540
    python bench/profiles.py --kinds ftw example --part 4/4 --time-budget 540
    python bench/profiles.py --kinds max-context --part 1/6 --time-budget 540 --cell-timeout 420
    ... (the same with --part 2/6 to --part 6/6)
Each merges its cells into the same results file; one that stops at --time-budget (exit code 3)
names the cells it left, to run again with --models/--profiles/--kinds. Only the 8 GB offload cells:
    python bench/profiles.py --kinds ftw --profiles rtx3070 --time-budget 540
Exercise the whole plumbing on a CPU (tiny model, short cutoffs, all kinds, results in a temp folder):
    python bench/profiles.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GIB = 1024**3
DEFAULT_MODELS = ["Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B-Instruct"]
DEFAULT_PROFILES = ["rtx3070", "rtx4070", "rtx5080-laptop"]
DEFAULT_CACHE = REPO / ".cache" / "bench-profiles"
DEFAULT_OUT = REPO / "bench" / "results"
VOCAB_DIR = REPO / "vendor" / "llama.cpp" / "models"
FIT_TARGET = 0.92  # of the profile's memory, peak reserved
SPEEDUP_TARGET = 1.5  # ftw tokens/s over the LLaMA-Factory example's, same model and budget
PLANNER_TOLERANCE = 0.15  # |measured peak reserved / planner estimate - 1|
WARMUP_STEPS = 1

# --kinds: which cells of each (model, profile); in this order within a model.
KIND_GROUPS = {
    "ftw": ("ftw",),
    "example": ("llamafactory-example",),
    "max-context": ("max_context", "max_context_plus10"),
}
DEFAULT_KINDS = ["ftw", "example"]  # --cpu-smoke: all of KIND_GROUPS
# max-context cells: the planner's longest cutoff (micro-batch 1, checkpoints offloaded), then +10%.
MAX_CONTEXT_PLUS = 0.10
MAX_CONTEXT_STEPS = 3  # 1 warm-up + 2 timed: the peak is per micro-batch, a few steps show it
MAX_CONTEXT_ACCUM = 2  # keeps accumulation in the loop without 8 micro-batches of 20-40k tokens a step
MAX_CONTEXT_ROWS = 16

# Rough seconds of a cell on a GPU, for --part and --list (the measured ones are each cell's wall_s):
# process start, imports and loading the 8B random model (QLoRA quantizes it while loading),
# the warm-up step's kernel compilation, then the steps at an assumed MFU of a reference GPU.
ESTIMATE_PEAK_TFLOPS = 989.0  # H100 SXM, dense bf16
ESTIMATE_MFU = {"qlora": 0.15, "lora": 0.25, "full": 0.25}
ESTIMATE_LOAD_S = {"qlora": 50.0, "lora": 35.0, "full": 35.0}
ESTIMATE_FIRST_STEP_S = 10.0
ESTIMATE_TOKENIZE_TOKENS_PER_S = 200_000.0
ESTIMATE_TOKENIZERS_S = 60.0  # llama.cpp vocabulary to tokenizer.json, the families side by side
ESTIMATE_MODEL_S = 100.0  # a random 8B model built on the GPU and saved (16 GB), each
ESTIMATE_RENDERS_S = 15.0
SLOT_S = 540.0  # a 10-minute device slot, less a minute for starting and copying back

# Dense bf16 tensor peaks (TFLOP/s, fp32 accumulate, no sparsity) from the vendors' data
# sheets; the first entry all of whose words are in the device name wins. --peak-tflops overrides.
PEAK_BF16_TFLOPS = [
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H200", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM / HBM3
    (("H200",), 989.0),
    (("A100",), 312.0),
    (("L40S",), 362.0),
    (("RTX", "4090"), 165.2),
]

# LLaMA-Factory's examples/train_lora/qwen3_lora_sft_otfq.yaml (0.9.5), read from the shared
# copy when there is one; this embedded copy must stay identical to it (a test checks).
EXAMPLE_NAME = "qwen3_lora_sft_otfq.yaml"
EXAMPLE_CANDIDATES = [
    REPO / "shared" / "external" / "llamafactory-examples" / EXAMPLE_NAME,
    REPO.parent / "shared" / "external" / "llamafactory-examples" / EXAMPLE_NAME,
]
EMBEDDED_EXAMPLE = {
    "model_name_or_path": "Qwen/Qwen3-4B-Instruct-2507",
    "quantization_bit": 4,
    "quantization_method": "bnb",
    "trust_remote_code": True,
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "lora_rank": 8,
    "lora_target": "all",
    "dataset": "identity,alpaca_en_demo",
    "template": "qwen3_nothink",
    "cutoff_len": 2048,
    "max_samples": 1000,
    "preprocessing_num_workers": 16,
    "dataloader_num_workers": 4,
    "output_dir": "saves/qwen3-4b/lora/sft",
    "logging_steps": 10,
    "save_steps": 500,
    "plot_loss": True,
    "overwrite_output_dir": True,
    "save_only_model": False,
    "report_to": "none",
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "learning_rate": 1.0e-4,
    "num_train_epochs": 3.0,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "bf16": True,
    "ddp_timeout": 180000000,
}

# Tokenizers of the model families, rebuilt offline from llama.cpp's vocabulary files.
TOKENIZERS = {
    "qwen2": {
        "gguf": "ggml-vocab-qwen2.gguf",
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "check": ("Hello", [9707]),
    },
    "llama3": {
        "gguf": "ggml-vocab-llama-bpe.gguf",
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": None,
        "check": ("Hello world", [9906, 1917]),
    },
}
FAMILY_OF_MODEL_TYPE = {"qwen2": "qwen2", "qwen3": "qwen2", "llama": "llama3"}
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_CHAT = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# --cpu-smoke: the real Qwen3-8B config scaled down, a short cutoff, 1 warm-up + 1 timed step.
SMOKE_MODEL = "Qwen/Qwen3-8B"
SMOKE_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
SMOKE_PROFILE = "rtx4070"
SMOKE_CUTOFF = 128
SMOKE_MAX_CONTEXT = 160  # the planner's longest cutoff for the tiny model is its whole context: clamped
SMOKE_STEPS = 2
SMOKE_ACCUM = 2  # effective batch 2 instead of the recipes' 8: a CPU step stays a few seconds

WORDS = [
    "the",
    "model",
    "answer",
    "question",
    "river",
    "city",
    "winter",
    "summer",
    "number",
    "letter",
    "table",
    "window",
    "garden",
    "music",
    "market",
    "reason",
    "system",
    "memory",
    "training",
    "data",
    "token",
    "layer",
    "weight",
    "value",
    "result",
    "method",
    "paper",
    "report",
    "station",
    "bridge",
    "mountain",
    "forest",
    "ocean",
    "island",
    "village",
    "teacher",
    "student",
    "doctor",
    "engineer",
    "farmer",
    "yellow",
    "green",
    "violet",
    "silver",
    "quickly",
    "slowly",
    "carefully",
    "never",
    "always",
    "often",
    "because",
    "although",
    "while",
    "before",
    "after",
    "during",
    "between",
    "under",
    "over",
    "through",
    "against",
    "among",
    "within",
    "without",
    "around",
    "ответ",
    "вопрос",
    "город",
    "река",
    "зима",
    "лето",
    "число",
    "письмо",
    "окно",
    "сад",
    "музыка",
    "рынок",
    "причина",
    "система",
    "память",
    "данные",
    "слой",
    "вес",
    "значение",
    "результат",
    "метод",
    "отчёт",
    "станция",
    "мост",
    "гора",
    "лес",
    "океан",
    "остров",
    "деревня",
    "учитель",
    "студент",
    "врач",
    "инженер",
    "быстро",
    "медленно",
    "всегда",
    "никогда",
    "потому",
    "хотя",
    "перед",
    "после",
]  # noqa: E501


# --- small helpers -------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def gpu_slug(name: str) -> str:
    return slug(re.sub(r"(?i)^nvidia\s+", "", name)) or "gpu"


def peak_tflops_for(name: str) -> float | None:
    upper = name.upper()
    for words, tflops in PEAK_BF16_TFLOPS:
        if all(word in upper for word in words):
            return tflops
    return None


def console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_yaml_like_llamafactory(path: Path) -> dict:
    """What `llamafactory-cli train FILE.yaml` reads (OmegaConf, as LLaMA-Factory's read_args)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def example_config() -> tuple[dict, str]:
    for candidate in EXAMPLE_CANDIDATES:
        if candidate.is_file():
            return load_yaml_like_llamafactory(candidate), str(candidate)
    return dict(EMBEDDED_EXAMPLE), "embedded copy in bench/profiles.py"


def versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("torch", "transformers", "llamafactory", "peft", "bitsandbytes", "liger_kernel", "flash_attn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


# --- inputs: dataset, recipes ---------------------------------------------------------


def write_dataset(folder: Path, cutoff: int, rows: int, seed: int = 0) -> tuple[Path, str]:
    """Seeded Alpaca rows whose instruction is at least `cutoff` tokens (every word is one token or
    more) and whose output is short (cutoff/16 English words, a token or two each): LLaMA-Factory
    keeps a target shorter than half the cutoff whole and cuts the source, so every row is exactly
    cutoff tokens and every answer keeps its end-of-turn token (render's will-it-stop check refuses
    a cutoff that cuts the answers)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"bench_synthetic_v2_c{cutoff}_r{rows}_s{seed}"
    path = folder / f"{name}.json"
    if not path.is_file():
        rng = random.Random(seed)
        english = WORDS[: WORDS.index("around") + 1]

        def text(words: int, vocabulary: list[str] = WORDS) -> str:
            return " ".join(rng.choice(vocabulary) for _ in range(words))

        records = [
            {"instruction": text(cutoff), "input": "", "output": text(max(4, cutoff // 16), english)}
            for _ in range(rows)
        ]
        staging = path.with_suffix(".partial")
        staging.write_text(json.dumps(records, ensure_ascii=False) + "\n", encoding="utf-8")
        staging.replace(path)
    info = folder / "dataset_info.json"
    entries = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
    entries[name] = {"file_name": path.name}
    info.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return path, name


def shipped_recipe_for(hub_id: str) -> Path:
    from wrapper.config.yamldoc import parse_yaml
    from wrapper.core.paths import RECIPES_DIR

    found = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        if path.name == "models.yaml":
            continue
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
        if isinstance(data.get("model"), dict) and data["model"].get("base") == hub_id:
            found.append(path)
    if not found:
        raise SystemExit(f"no shipped recipe in recipes/ has model.base {hub_id}")
    return found[0]


def write_recipe_copy(shipped: Path, model_dir: Path, folder: Path) -> Path:
    """The shipped recipe with model.base swapped for the random-weight folder; nothing else changes."""
    import yaml

    from wrapper.config.yamldoc import parse_yaml

    data = parse_yaml(shipped.read_text(encoding="utf-8"))
    data["model"]["base"] = str(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / shipped.name  # same file name: same recipe name in the run
    header = (
        f"# Copy of {shipped.relative_to(REPO)} made by bench/profiles.py: model.base is a local\n"
        f"# random-weight model with the real architecture; every other value is the shipped one.\n"
    )
    staging = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}")  # renders run side by side
    staging.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    staging.replace(path)
    return path


def model_config_for(hub_id: str, smoke: bool) -> dict:
    from wrapper.config.models import known_configs

    configs = known_configs()
    if hub_id not in configs:
        raise SystemExit(f"{hub_id} is not in recipes/models.yaml; known: {', '.join(configs)}")
    config = dict(configs[hub_id])
    if smoke:
        config.update(SMOKE_SHAPE, max_position_embeddings=4096)
    return config


# --- child processes ----------------------------------------------------------------------


def run_child(mode: str, spec: dict, log: Path, timeout: float) -> tuple[dict | None, str | None, float]:
    """Run this file in `mode` in a fresh process; (its result JSON or None, an error or None, seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    spec_path = log.with_suffix(".spec.json")
    result_path = log.with_suffix(".result.json")
    result_path.unlink(missing_ok=True)
    spec = dict(spec, result=str(result_path))
    spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), mode, str(spec_path)],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            return None, f"timed out after {timeout:.0f} s (log: {log})", time.perf_counter() - started
    elapsed = time.perf_counter() - started
    result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else None
    if result is None:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        return None, f"child exited {code} without a result (log: {log}):\n{tail}", elapsed
    return result, None, elapsed


def child_prepare(spec: dict) -> dict:
    """Tokenizers and random-weight models (on the GPU when there is one); reports the device."""
    import torch

    info: dict = {"cuda": torch.cuda.is_available(), "models": {}}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            total_memory_bytes=props.total_memory,
            compute_capability=float(f"{props.major}.{props.minor}"),
            gpu_count=torch.cuda.device_count(),
        )
    elif not spec["smoke"]:
        info["error"] = "no CUDA GPU visible to PyTorch: run this on an NVIDIA machine, or use --cpu-smoke"
        return info
    cache = Path(spec["cache"])
    families = sorted({FAMILY_OF_MODEL_TYPE[config["model_type"]] for config in spec["models"].values()})
    jobs = [(family, cache / "tokenizers" / family, Path(spec["vocab_dir"])) for family in families]
    if sum(not target.is_dir() for _, target, _ in jobs) > 1:  # ~40-50 s each, single-threaded: build side by side
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(ensure_tokenizer, *zip(*jobs)))
    tokenizers = {family: ensure_tokenizer(family, target, vocab) for family, target, vocab in jobs}
    for hub_id, config in spec["models"].items():
        target = cache / "models" / (slug(hub_id) + ("-smoke" if spec["smoke"] else "") + "-random")
        device = "cpu"
        if info["cuda"]:
            from wrapper.config.planner import ModelShape

            free, _ = torch.cuda.mem_get_info()
            device = "cuda" if ModelShape.from_config(config).params * 2 * 1.2 < free else "cpu"
        # --cpu-smoke trains on the CPU, where bfloat16 weights take PyTorch's reference gemm unless the CPU has
        # fast bfloat16 (wrapper/core/cpu.py): its tiny models are float32, since no number of it is a measurement.
        dtype = "float32" if spec["smoke"] else "bfloat16"
        ensure_random_model(config, tokenizers[FAMILY_OF_MODEL_TYPE[config["model_type"]]], target, device, dtype)
        info["models"][hub_id] = str(target)
    return info


def staged(target: Path, build) -> Path:
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


LLAMA31_SPECIALS = {
    128004: "<|finetune_right_pad_id|>",
    128005: "<|reserved_special_token_2|>",
    128008: "<|eom_id|>",
    128010: "<|python_tag|>",
}


def _llama31_names(folder: Path) -> None:
    """llama.cpp ships Llama 3.0's vocabulary; Llama 3.1 renamed some reserved special tokens,
    and LLaMA-Factory's llama3 template needs <|eom_id|> (missing, it would add a token and
    grow the embedding, which QLoRA refuses). Rename them as in Llama-3.1's tokenizer.json."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))

    def name(token_id: int, old: str) -> str:
        if token_id in LLAMA31_SPECIALS:
            return LLAMA31_SPECIALS[token_id]
        if token_id >= 128011 and old.startswith("<|reserved_special_token_"):
            return f"<|reserved_special_token_{token_id - 128008}|>"
        return old

    renamed = {}
    for entry in data["added_tokens"]:
        new = name(entry["id"], entry["content"])
        renamed[entry["content"]] = new
        entry["content"] = new
    vocab = data["model"]["vocab"]
    data["model"]["vocab"] = {renamed.get(token, token): index for token, index in vocab.items()}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def ensure_tokenizer(family: str, target: Path, vocab_dir: Path) -> Path:
    from transformers import AutoTokenizer

    facts = TOKENIZERS[family]

    def build(out: Path) -> None:
        gguf = vocab_dir / facts["gguf"]
        if not gguf.is_file():
            raise SystemExit(f"{gguf} not found: run `make setup` (unpacks vendor/llama.cpp) or pass --vocab-dir")
        tokenizer = AutoTokenizer.from_pretrained(vocab_dir, gguf_file=facts["gguf"])
        tokenizer.save_pretrained(out)
        if family == "llama3":
            _llama31_names(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        tokenizer.bos_token = facts["bos"]
        tokenizer.eos_token = facts["eos"]
        if facts["pad"]:
            tokenizer.pad_token = facts["pad"]
        tokenizer.chat_template = CHATML if family == "qwen2" else LLAMA3_CHAT
        tokenizer.save_pretrained(out)

    staged(target, build)
    tokenizer = AutoTokenizer.from_pretrained(target)
    text, ids = facts["check"]
    if tokenizer(text, add_special_tokens=False).input_ids != ids or tokenizer.eos_token != facts["eos"]:
        raise SystemExit(
            f"unexpected tokenizer in {target}: {text!r} -> {tokenizer(text).input_ids}, "
            f"eos {tokenizer.eos_token!r}; delete the folder to rebuild it"
        )
    return target


def ensure_random_model(config: dict, tokenizer_dir: Path, target: Path, device: str, dtype: str) -> Path:
    marker = target / "bench-profiles.json"
    built = json.loads(marker.read_text()) if marker.is_file() else {}
    if target.is_dir() and (built.get("config") != config or built.get("dtype", "bfloat16") != dtype):
        shutil.rmtree(target)  # built from another config or dtype: rebuild

    def build(out: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        settings = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
        hf_config = AutoConfig.for_model(config["model_type"], **settings)
        hf_config.architectures = list(config["architectures"])
        hf_config.bos_token_id = (
            tokenizer.bos_token_id
            if tokenizer.bos_token_id is not None
            else tokenizer.convert_tokens_to_ids("<|endoftext|>")
        )
        hf_config.eos_token_id = tokenizer.eos_token_id
        hf_config.pad_token_id = tokenizer.pad_token_id
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(hf_config, dtype=getattr(torch, dtype))
        model.save_pretrained(out, max_shard_size="5GB")
        del model
        tokenizer.save_pretrained(out)
        marker_text = json.dumps({"config": config, "dtype": dtype, "built_at": now()}) + "\n"
        (out / "bench-profiles.json").write_text(marker_text)

    return staged(target, build)


CPU_SMOKE_OVERRIDES = {
    "bf16": False,
    "fp16": False,
    "enable_liger_kernel": False,
    "dataloader_num_workers": 0,
    "preprocessing_num_workers": 1,
}


def cpu_overrides(args: dict) -> dict:
    """What a GPU config can't do on a CPU (bf16, Liger, paged 8-bit optimizers, FlashAttention,
    LLaMA-Factory's offloaded checkpointing, whose backward pass copies the layer inputs to "cuda")."""
    changes = {k: v for k, v in CPU_SMOKE_OVERRIDES.items() if k in args and args[k] != v}
    if args.get("use_unsloth_gc"):
        changes["use_unsloth_gc"] = False
    optim = str(args.get("optim", ""))
    if "8bit" in optim or "paged" in optim:
        changes["optim"] = "adamw_torch"
    if args.get("flash_attn") == "fa2":
        changes["flash_attn"] = "sdpa"
    return changes


def child_train(spec: dict) -> dict:
    """One cell: cap the allocator, then LLaMA-Factory's run_exp in this process, timed by a callback."""
    import torch
    from transformers import TrainerCallback

    started = time.perf_counter()
    args = load_yaml_like_llamafactory(Path(spec["yaml"]))
    result: dict = {"status": "error", "error": None, "overrides": {}}
    cuda = spec["device"] == "cuda"
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        budget = int(spec["budget_gb"] * GIB)
        fraction = min(1.0, budget / total)
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        result.update(
            total_memory_bytes=total, budget_bytes=budget, memory_fraction=fraction, budget_exceeds_card=budget > total
        )
    else:
        result["overrides"] = cpu_overrides(args)
        args.update(result["overrides"])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.step_ends: list[tuple[int, float]] = []
            self.step_start: float | None = None
            self.device_used = 0

        def _sync(self):
            if cuda:
                torch.cuda.synchronize()

        def on_train_begin(self, targs, state, control, **kwargs):
            self._sync()
            result["seconds_to_train_begin"] = round(time.perf_counter() - started, 2)
            result["micro_batch"] = targs.per_device_train_batch_size
            result["grad_accum"] = targs.gradient_accumulation_steps
            # LLaMA-Factory turns checkpointing on in the model, not through TrainingArguments
            model = kwargs.get("model")
            result["gradient_checkpointing"] = bool(
                getattr(model, "is_gradient_checkpointing", False) or targs.gradient_checkpointing
            )
            loader = kwargs.get("train_dataloader")
            dataset = getattr(loader, "dataset", None)
            try:
                lengths = [len(ids) for ids in dataset["input_ids"]]
                result["sample_tokens"] = {
                    "count": len(lengths),
                    "min": min(lengths),
                    "max": max(lengths),
                    "mean": sum(lengths) / len(lengths),
                }
            except Exception as exc:  # the dataset's shape is LLaMA-Factory's business; say we couldn't look
                result["sample_tokens"] = {"error": repr(exc)}
            if cuda:
                result["load_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
                result["load_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, targs, state, control, **kwargs):
            if self.step_start is None:
                self._sync()
                self.step_start = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            self._sync()
            self.step_ends.append((state.global_step, time.perf_counter()))
            if cuda:
                free, total_now = torch.cuda.mem_get_info()
                self.device_used = max(self.device_used, total_now - free)

    bench = StepTimer()
    try:
        from llamafactory.train.tuner import run_exp

        run_exp(args, callbacks=[bench])
        result["status"] = "ok"
    except torch.OutOfMemoryError as exc:
        result.update(status="oom", error=(str(exc).splitlines() or [repr(exc)])[0][:500])
    except Exception as exc:  # noqa: BLE001 - bitsandbytes and cuBLAS report OOM as RuntimeError
        message = f"{type(exc).__name__}: {exc}"
        oom = any(s in message for s in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "OutOfMemory"))
        result.update(status="oom" if oom else "error", error=message[:2000])
        if not oom:
            import traceback

            traceback.print_exc()
    ends = bench.step_ends
    result["steps_done"] = ends[-1][0] if ends else 0
    if bench.step_start is not None and ends:
        result["first_step_s"] = round(ends[0][1] - bench.step_start, 3)
    timed = [t for step, t in ends if step >= WARMUP_STEPS]
    if len(timed) >= 2:
        result["timed_steps"] = len(timed) - 1
        result["timed_seconds"] = timed[-1] - timed[0]
    if cuda:
        train_alloc, train_reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        load_alloc = result.get("load_peak_allocated_bytes", 0)
        load_reserved = result.get("load_peak_reserved_bytes", 0)
        if "load_peak_allocated_bytes" in result:  # peaks were reset at the first step
            result.update(train_peak_allocated_bytes=train_alloc, train_peak_reserved_bytes=train_reserved)
        result["peak_allocated_bytes"] = max(train_alloc, load_alloc)
        result["peak_reserved_bytes"] = max(train_reserved, load_reserved)
        result["device_used_bytes"] = bench.device_used or None
        stats = torch.cuda.memory_stats()
        result["alloc_retries"] = stats.get("num_alloc_retries", 0)
    result["wall_s"] = round(time.perf_counter() - started, 2)
    return result


def child_main(mode: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = child_prepare(spec) if mode == "--_prepare" else child_train(spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


# --- the grid: cells, their estimated times, parts ----------------------------------------


@dataclass
class CellSpec:
    """One cell to run: which kind, model and profile, at which cutoff, for how many steps."""

    kind: str  # ftw | llamafactory-example | max_context | max_context_plus10
    hub: str
    profile: str
    cutoff: int
    steps: int
    rows: int  # of the synthetic dataset at this cutoff
    context: dict | None = None  # max-context cells: the planner's answer (longest_context)
    error: str | None = None  # a max-context cell whose planner fits no cutoff at all

    @property
    def label(self) -> str:
        return f"{KIND_LABELS.get(self.kind, self.kind)} {self.hub} {self.profile}"


KIND_LABELS = {
    "ftw": "ftw",
    "llamafactory-example": "LF example",
    "max_context": "longest ctx",
    "max_context_plus10": "longest +10%",
}


def longest_context(recipe: str, profile_name: str, clamp: int | None = None) -> dict:
    """The planner's longest cutoff_len for the recipe on the profile, as `ftw plan --max-context
    --profile P` reports it: at micro-batch 1 with checkpoints offloaded to host RAM, over the
    methods it may train with (the recipe's, and QLoRA where the recipe is LoRA); the longest wins,
    the recipe's own method on a tie. `clamp` (--cpu-smoke) shortens what is trained, not the answer."""
    from wrapper.train.plan_report import max_context_report

    report = max_context_report(recipe, profile_name, [])
    rows = report["profiles"]
    row = max(enumerate(rows), key=lambda pair: (pair[1]["with_offload"], -pair[0]))[1]
    longest = int(row["with_offload"])
    cutoff = min(longest, clamp) if clamp else longest
    return {
        "planner_longest_cutoff": longest,
        "planner_longest_without_offload": int(row["without_offload"]),
        "planner_longest_method": row["method"],
        "planner_longest_host_ram_gb": row["host_ram_gb_with_offload"],
        "model_context": report["model_context"],
        "max_context_rows": rows,
        "cutoff": cutoff,
        "smoke_clamped_to": clamp if clamp and cutoff != longest else None,
    }


def plus_cutoff(cutoff: int) -> int:
    return int(cutoff * (1 + MAX_CONTEXT_PLUS))


def cell_specs(options, contexts: dict | None = None) -> list[CellSpec]:
    """The selected cells in a fixed order (model, then kind group, then profile): a part of
    --part K/N is a contiguous run of it, so it prepares as few models as it can."""
    contexts = {} if contexts is None else contexts
    rows = max(64, (options.steps + 1) * 16)  # more rows than the steps consume at 8-16 rows a step
    context_steps = SMOKE_STEPS if options.cpu_smoke else MAX_CONTEXT_STEPS
    specs = []
    for hub in options.models:
        for group, kinds in KIND_GROUPS.items():
            if group not in options.kinds:
                continue
            for profile in options.profiles:
                for kind in kinds:
                    if group != "max-context":
                        specs.append(CellSpec(kind, hub, profile, options.cutoff, options.steps, rows))
                        continue
                    if (hub, profile) not in contexts:  # the shipped recipe: same shapes as the bench's copy
                        clamp = SMOKE_MAX_CONTEXT if options.cpu_smoke else None
                        contexts[(hub, profile)] = longest_context(str(shipped_recipe_for(hub)), profile, clamp)
                    context = contexts[(hub, profile)]
                    cutoff = context["cutoff"] if kind == "max_context" else plus_cutoff(context["cutoff"])
                    spec = CellSpec(kind, hub, profile, cutoff, context_steps, MAX_CONTEXT_ROWS, context)
                    if not context["planner_longest_cutoff"]:
                        spec.error = f"the planner fits no cutoff_len at all for {hub} on {profile}"
                    specs.append(spec)
    return specs


def estimate(spec: CellSpec, peak_tflops: float):
    """(rough seconds of the cell on a GPU, the planner's settings for it)."""
    from wrapper.config import planner
    from wrapper.config.profiles import load_profile
    from wrapper.config.recipes import load_recipe
    from wrapper.train.render import tuned_args

    shape = planner.ModelShape.from_config(model_config_for(spec.hub, smoke=False))
    if spec.kind == "llamafactory-example":
        args = dict(example_config()[0], cutoff_len=spec.cutoff)
        settings = planner.settings_from_args(args, "qlora", 1)
    else:
        recipe = load_recipe(str(shipped_recipe_for(spec.hub)))
        profile = load_profile(spec.profile)
        args, _ = tuned_args(recipe, profile)
        args["cutoff_len"] = spec.cutoff
        if spec.kind == "ftw":
            settings = planner.plan_for_profile(shape, args, recipe.method, profile, set()).settings
        else:
            method = spec.context["planner_longest_method"] if spec.context else recipe.method
            settings = replace(
                planner.settings_from_args(args, method, 1),
                micro_batch=1,
                grad_accum=MAX_CONTEXT_ACCUM,
                checkpointing=True,
                offload_checkpoints=True,
            )
    tokens = settings.tokens_per_step
    step_s = tokens * (
        planner.train_flops_per_token(shape, settings) / (peak_tflops * 1e12 * ESTIMATE_MFU[settings.method])
        + planner.offload_seconds_per_token(shape, settings)
    )
    seconds = (
        ESTIMATE_LOAD_S[settings.method]
        + spec.rows * 2 * spec.cutoff / ESTIMATE_TOKENIZE_TOKENS_PER_S
        + ESTIMATE_FIRST_STEP_S
        + spec.steps * step_s
    )
    return seconds, settings


def prepare_estimate(hubs: set[str]) -> float:
    """A bare machine: tokenizers, one random model per model, the renders."""
    return (ESTIMATE_TOKENIZERS_S + ESTIMATE_MODEL_S * len(hubs) + ESTIMATE_RENDERS_S) if hubs else 0.0


def part_seconds(specs: list[CellSpec], seconds: list[float], indices: list[int]) -> float:
    return prepare_estimate({specs[i].hub for i in indices}) + sum(seconds[i] for i in indices)


def split_parts(specs: list[CellSpec], seconds: list[float], count: int) -> list[list[int]]:
    """`count` contiguous parts of the cells (some maybe empty) whose longest estimated time,
    preparing their models included, is as short as it can be: the smallest cap at which
    packing each part as full as the cap allows needs at most `count` parts."""

    def pack(cap: float) -> list[list[int]]:
        parts, current = [], []
        for index in range(len(specs)):
            if current and part_seconds(specs, seconds, current + [index]) > cap:
                parts.append(current)
                current = []
            current.append(index)
        return parts + ([current] if current else [])

    if not specs:
        return [[] for _ in range(count)]
    low = max(part_seconds(specs, seconds, [i]) for i in range(len(specs)))
    high = part_seconds(specs, seconds, list(range(len(specs))))
    if len(pack(low)) > count:
        while high - low > 0.5:  # pack(high) fits in count parts, pack(low) does not
            middle = (low + high) / 2
            low, high = (low, middle) if len(pack(middle)) <= count else (middle, high)
    else:
        high = low
    parts = pack(high)
    return parts + [[] for _ in range(count - len(parts))]


def parts_for_slot(specs: list[CellSpec], seconds: list[float], slot: float) -> int:
    """The fewest parts whose estimated times are each within the slot (or one per cell)."""
    for count in range(1, len(specs) + 1):
        parts = split_parts(specs, seconds, count)
        if max(part_seconds(specs, seconds, part) for part in parts) <= slot:
            return count
    return max(1, len(specs))


def print_estimates(con, specs, seconds, settings, parts, part: int | None, peak: float) -> None:
    from rich.table import Table

    count = len(parts)
    table = Table(
        title=f"cells and rough GPU seconds (a {peak:g} TFLOP/s bf16 GPU; preparing a bare machine included per part)"
    )
    for column in ("part", "kind", "model", "profile", "method", "micro×acc", "cutoff", "offload", "steps", "est. s"):
        table.add_column(column, justify="left" if column in ("kind", "model", "profile", "method") else "right")
    for number, indices in enumerate(parts, 1):
        if part and number != part:
            continue
        for i in indices:
            spec, s = specs[i], settings[i]
            table.add_row(
                f"{number}/{count}",
                KIND_LABELS[spec.kind],
                spec.hub.split("/")[-1],
                spec.profile,
                s.method,
                f"{s.micro_batch}×{s.grad_accum}",
                f"{spec.cutoff:,}",
                "host RAM" if s.checkpointing and s.offload_checkpoints else "—",
                str(spec.steps),
                f"{seconds[i]:.0f}",
            )
    con.print(table)
    for number, indices in enumerate(parts, 1):
        if part and number != part:
            continue
        hubs = {specs[i].hub for i in indices}
        con.print(
            f"  part {number}/{count}: {len(indices)} cell(s), ~{part_seconds(specs, seconds, indices):.0f} s "
            f"(of which ~{prepare_estimate(hubs):.0f} s preparing {len(hubs)} model(s) on a bare machine)"
        )


# --- cells ------------------------------------------------------------------------------


class Bench:
    def __init__(self, options, gpu: dict, peak: float | None, command: str):
        self.o = options
        self.gpu = gpu
        self.peak = peak
        self.command = command
        self.device = "cuda" if gpu.get("cuda") else "cpu"
        self.con = console()
        self.datasets: dict[tuple[int, int], tuple[Path, str]] = {}

    def dataset(self, cutoff: int, rows: int) -> tuple[Path, str]:
        """The synthetic data at this cutoff; call it from one thread (it updates dataset_info.json)."""
        if (cutoff, rows) not in self.datasets:
            self.datasets[(cutoff, rows)] = write_dataset(Path(self.o.cache) / "data", cutoff, rows)
        return self.datasets[(cutoff, rows)]

    def recipe_copy(self, hub_id: str, model_dir: Path) -> Path:
        folder = Path(self.o.cache) / "recipes" / ("smoke" if self.o.cpu_smoke else "gpu")
        return write_recipe_copy(shipped_recipe_for(hub_id), model_dir, folder)

    def base_cell(self, spec: CellSpec) -> dict:
        from wrapper.config.profiles import load_profile

        profile = load_profile(spec.profile)
        # smoke cells never carry a hub id, so planner.measured_mfu can't mistake them for measurements
        cell = {
            "kind": spec.kind,
            "model": f"smoke:{spec.hub}" if self.o.cpu_smoke else spec.hub,
            "profile": profile.name,
            "memory_gb": profile.memory_gb,
            "gpu": self.gpu.get("gpu", "cpu"),
            "steps": spec.steps,
            "cutoff": spec.cutoff,
            "command": self.command,
            "measured_at": now(),
        }
        if spec.context is not None:
            context = {k: v for k, v in spec.context.items() if k != "cutoff"}
            cell.update(
                context,
                plus=MAX_CONTEXT_PLUS if spec.kind == "max_context_plus10" else 0.0,
                beyond_model_context=spec.cutoff > context["model_context"],  # +10% of a model's whole context
            )
        if spec.error:
            cell.update(fits=None, oom=False, error=spec.error)
        return cell

    def train(self, cell: dict, yaml_path: Path, log: Path) -> dict:
        spec = {"yaml": str(yaml_path), "device": self.device, "budget_gb": cell["memory_gb"]}
        result, error, elapsed = run_child("--_train", spec, log, self.o.cell_timeout)
        cell["log"] = str(log)
        cell["wall_s"] = round(elapsed, 1)
        if result is None:
            cell.update(fits=None, oom=False, error=error)
            return {}
        cell["fits"] = result["status"] == "ok"
        cell["oom"] = result["status"] == "oom"
        cell["error"] = result["error"]
        if result.get("overrides"):
            cell["cpu_smoke_overrides"] = result["overrides"]
        return result

    def finish(self, cell: dict, result: dict, shape, settings) -> dict:
        from wrapper.config import planner

        gb = lambda key: round(result[key] / GIB, 3) if result.get(key) else None  # noqa: E731
        for key in (
            "peak_allocated",
            "peak_reserved",
            "train_peak_allocated",
            "train_peak_reserved",
            "load_peak_allocated",
            "load_peak_reserved",
        ):
            cell[f"{key}_gb"] = gb(f"{key}_bytes")
        cell["device_used_gb"] = gb("device_used_bytes")
        cell["alloc_retries"] = result.get("alloc_retries")
        cell["memory_fraction"] = result.get("memory_fraction")
        micro, accum = result.get("micro_batch"), result.get("grad_accum")
        cell["micro_batch"], cell["grad_accum"] = micro, accum
        cell["gradient_checkpointing"] = result.get("gradient_checkpointing")
        samples = result.get("sample_tokens") or {}
        cell["sample_tokens"] = samples
        cell["all_samples_at_cutoff"] = samples.get("min") == samples.get("max") == cell["cutoff"]
        per_sample = cell["cutoff"] if cell["all_samples_at_cutoff"] else samples.get("mean")
        cell["tokens_per_step"] = int(micro * accum * per_sample) if micro and accum and per_sample else None
        cell["timed_steps"] = result.get("timed_steps")
        cell["timed_seconds"] = round(result["timed_seconds"], 3) if result.get("timed_seconds") else None
        cell["first_step_s"] = result.get("first_step_s")
        cell["seconds_to_train_begin"] = result.get("seconds_to_train_begin")
        tps = None
        if cell["fits"] and cell["timed_seconds"] and cell["tokens_per_step"]:
            tps = cell["timed_steps"] * cell["tokens_per_step"] / cell["timed_seconds"]
        cell["tokens_per_s"] = round(tps, 1) if tps else None
        flops = planner.train_flops_per_token(shape, settings)
        cell["flops_per_token"] = flops
        cell["peak_bf16_tflops"] = self.peak
        cell["mfu"] = round(tps * flops / (self.peak * 1e12), 4) if tps and self.peak else None
        reserved = cell["peak_reserved_gb"]
        cell["budget_fraction"] = round(reserved / cell["memory_gb"], 4) if reserved and cell["memory_gb"] else None
        cell["within_92pct"] = (
            (cell["fits"] and cell["budget_fraction"] is not None and cell["budget_fraction"] <= FIT_TARGET)
            if self.device == "cuda"
            else None
        )
        estimate = cell.get("planner_peak_gb")
        if cell["fits"] and reserved and estimate:
            cell["planner_error"] = round(reserved / estimate - 1, 4)
            cell["planner_within_15pct"] = abs(cell["planner_error"]) <= PLANNER_TOLERANCE
        else:
            cell["planner_error"] = cell["planner_within_15pct"] = None
        return cell

    def render_ftw(self, spec: CellSpec, model_dir: Path) -> tuple[dict, Path | None]:
        """`ftw render` of the shipped recipe (base swapped) for the profile; the cell so far and the run folder.
        A max-context cell pins its cutoff, micro-batch 1 and use_unsloth_gc (what the planner's longest assumes)."""
        cell = self.base_cell(spec)
        if spec.error:
            return cell, None
        shipped = shipped_recipe_for(spec.hub)
        recipe = self.recipe_copy(spec.hub, model_dir)
        suffix = "" if spec.kind == "ftw" else "-" + slug(spec.kind)
        run = f"bench-{slug(spec.hub)}-{slug(spec.profile)}{suffix}" + ("-smoke" if self.o.cpu_smoke else "")
        runs = Path(self.o.cache) / "runs"
        sets = [f"max_steps={spec.steps}", "logging_steps=1", "save_steps=100000"]
        if spec.kind == "ftw" and self.o.cpu_smoke:
            sets += [f"cutoff_len={spec.cutoff}", f"gradient_accumulation_steps={SMOKE_ACCUM}"]
        elif spec.kind != "ftw":
            sets += [
                f"cutoff_len={spec.cutoff}",
                "per_device_train_batch_size=1",
                f"gradient_accumulation_steps={MAX_CONTEXT_ACCUM}",
                "use_unsloth_gc=true",
            ]
        dataset, _ = self.datasets[(spec.cutoff, spec.rows)]
        argv = [
            "render",
            "--recipe",
            str(recipe),
            "--profile",
            spec.profile,
            "--run",
            run,
            "--data",
            str(dataset),
            "--ignore-fit",
        ] + [x for s in sets for x in ("--set", s)]
        cell.update(recipe=str(shipped.relative_to(REPO)), render_command="ftw " + shlex.join(argv))
        env = dict(os.environ, FTW_RUNS_DIR=str(runs), COLUMNS="200", HF_HUB_OFFLINE="1")
        rendered = subprocess.run(
            [sys.executable, "-m", "wrapper.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True
        )
        if rendered.returncode != 0:
            cell.update(
                fits=None,
                oom=False,
                error=f"ftw render failed ({rendered.returncode}):\n{rendered.stdout[-2000:]}{rendered.stderr[-2000:]}",
            )
            return cell, None
        return cell, runs / run

    def ftw_cell(self, cell: dict, run_dir: Path | None, model_dir: Path) -> dict:
        """A rendered run (kind ftw, or a max-context cell) trained as `llamafactory-cli train` would."""
        from wrapper.config import planner
        from wrapper.config.models import model_config

        if run_dir is None:  # render failed, or the planner fits no cutoff
            return cell
        cell["measured_at"] = now()
        plan = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["plan"]
        fit = plan["fit"] or {}
        settings = planner.Settings(**fit["settings"])
        train_yaml = load_yaml_like_llamafactory(run_dir / "train.yaml")
        cell.update(
            method=plan["method"],
            planner_peak_gb=fit.get("peak_vram_gb"),
            planner_fits=fit.get("fits"),
            planner_memory_gb=fit.get("memory_gb"),
            planner_settings=fit.get("settings"),
            planner_notes=fit.get("notes"),
            offload_checkpoints=bool(train_yaml.get("use_unsloth_gc", False)),
            host_ram_gb=fit.get("host_ram_gb"),
            train_yaml=str(run_dir / "train.yaml"),
            settings=_key_settings(plan["train_args"]),
        )
        shutil.rmtree(plan["train_args"]["output_dir"], ignore_errors=True)
        result = self.train(cell, run_dir / "train.yaml", Path(self.o.cache) / "logs" / f"{run_dir.name}.log")
        shape = planner.ModelShape.from_config(model_config(str(model_dir)))
        return self.finish(cell, result, shape, settings)

    def example_cell(self, spec: CellSpec, model_dir: Path, template: str) -> dict:
        from wrapper.config import planner
        from wrapper.config.models import model_config

        cell = self.base_cell(spec)
        dataset, dataset_name = self.datasets[(spec.cutoff, spec.rows)]
        args, source = example_config()
        name = f"example-{slug(spec.hub)}-{slug(spec.profile)}" + ("-smoke" if self.o.cpu_smoke else "")
        out_dir = Path(self.o.cache) / "example-runs" / name
        swapped = {
            "model_name_or_path": str(model_dir),
            "template": template,
            "dataset": dataset_name,
            "dataset_dir": str(dataset.parent),
            "cutoff_len": spec.cutoff,
            "output_dir": str(out_dir),
            "max_steps": spec.steps,
            "logging_steps": 1,
        }
        if self.o.cpu_smoke:
            swapped["gradient_accumulation_steps"] = SMOKE_ACCUM
        changed = {k: v for k, v in swapped.items() if args.get(k) != v}
        args.update(swapped)
        yaml_path = Path(self.o.cache) / "example-yaml" / f"{name}.yaml"
        yaml_path.parent.mkdir(parents=True, exist_ok=True)
        import yaml

        yaml_path.write_text(
            f"# LLaMA-Factory's {EXAMPLE_NAME} ({source}) with these keys swapped by "
            f"bench/profiles.py: {', '.join(changed)}\n" + yaml.safe_dump(args, sort_keys=False),
            encoding="utf-8",
        )
        settings = planner.settings_from_args(args, "qlora" if args.get("quantization_bit") else "lora", 1)
        shape = planner.ModelShape.from_config(model_config(str(model_dir)))
        estimate = planner.estimate_memory(shape, settings)
        cell.update(
            example=source,
            method=settings.method,
            swapped_keys=sorted(changed),
            train_yaml=str(yaml_path),
            planner_peak_gb=round(estimate.total, 2),
            planner_fits=estimate.total <= cell["memory_gb"] * planner.FIT_FRACTION,
            offload_checkpoints=bool(args.get("use_unsloth_gc", False)),
            host_ram_gb=round(planner.host_ram_gb(shape, settings), 2),
            settings=_key_settings(args),
        )
        shutil.rmtree(out_dir, ignore_errors=True)
        result = self.train(cell, yaml_path, Path(self.o.cache) / "logs" / f"{name}.log")
        return self.finish(cell, result, shape, settings)


def _key_settings(args: dict) -> dict:
    keys = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "disable_gradient_checkpointing",
        "quantization_bit",
        "optim",
        "enable_liger_kernel",
        "flash_attn",
        "lora_rank",
        "lora_target",
        "bf16",
        "cutoff_len",
        "use_unsloth_gc",
    )
    return {key: args[key] for key in keys if key in args}


# --- results ----------------------------------------------------------------------------


def cell_key(cell: dict) -> tuple:
    return cell["kind"], cell["model"], cell["profile"]


def targets(cells: list[dict]) -> dict:
    ftw = [c for c in cells if c["kind"] == "ftw"]
    example = {(c["model"], c["profile"]): c for c in cells if c["kind"] == "llamafactory-example"}

    def verdict(items: list[bool | None]) -> bool | None:
        return None if not items or any(i is None for i in items) else all(items)

    fit_rows = [
        {
            "model": c["model"],
            "profile": c["profile"],
            "fits": c.get("fits"),
            "budget_fraction": c.get("budget_fraction"),
            "offload_checkpoints": c.get("offload_checkpoints"),
            "host_ram_gb": c.get("host_ram_gb"),
            "met": c.get("within_92pct"),
        }
        for c in ftw
    ]
    speed_rows = []
    for c in ftw:
        base = example.get((c["model"], c["profile"]))
        row = {
            "model": c["model"],
            "profile": c["profile"],
            "ftw_tokens_per_s": c.get("tokens_per_s"),
            "example_tokens_per_s": base.get("tokens_per_s") if base else None,
            "example_oom": base.get("oom") if base else None,
            "speedup": None,
            "met": None,
        }
        if base and c.get("fits") and c.get("tokens_per_s"):
            if base.get("oom"):
                row["met"] = True  # the example does not fit this budget at all
            elif base.get("tokens_per_s"):
                row["speedup"] = round(c["tokens_per_s"] / base["tokens_per_s"], 3)
                row["met"] = row["speedup"] >= SPEEDUP_TARGET
        elif c.get("fits") is False:
            row["met"] = False
        speed_rows.append(row)
    planner_rows = [
        {
            "kind": c["kind"],
            "model": c["model"],
            "profile": c["profile"],
            "planner_peak_gb": c.get("planner_peak_gb"),
            "measured_peak_reserved_gb": c.get("peak_reserved_gb"),
            "planner_error": c.get("planner_error"),
            "met": c.get("planner_within_15pct"),
        }
        for c in cells
        if c.get("fits")
    ]
    plus = {(c["model"], c["profile"]): c for c in cells if c["kind"] == "max_context_plus10"}
    context_rows = []
    for c in cells:
        if c["kind"] != "max_context":
            continue
        over = plus.get((c["model"], c["profile"])) or {}
        fits = c.get("fits")
        context_rows.append(
            {
                "model": c["model"],
                "profile": c["profile"],
                "method": c.get("method"),
                "cutoff": c.get("cutoff"),
                "planner_longest_cutoff": c.get("planner_longest_cutoff"),
                "offload_checkpoints": c.get("offload_checkpoints"),
                "fits": fits,
                "oom": c.get("oom"),
                "budget_fraction": c.get("budget_fraction"),
                "planner_peak_gb": c.get("planner_peak_gb"),
                "measured_peak_reserved_gb": c.get("peak_reserved_gb"),
                "plus10_cutoff": over.get("cutoff"),
                "plus10_fits": over.get("fits"),
                "plus10_oom": over.get("oom"),
                "plus10_budget_fraction": over.get("budget_fraction"),
                "plus10_within_92pct": over.get("within_92pct"),
                # within 92% too, as every ftw cell: the rest of a real card is the CUDA context and headroom
                "met": False if fits is False else None if fits is None else c.get("within_92pct"),
            }
        )
    return {
        "fit_within_92pct": {
            "target": f"every ftw cell fits, peak reserved <= {FIT_TARGET:.0%} of the profile's memory",
            "met": verdict([r["met"] for r in fit_rows]),
            "cells": fit_rows,
        },
        "speedup_vs_example": {
            "target": f"ftw tokens/s >= {SPEEDUP_TARGET}x LLaMA-Factory's QLoRA example, same model "
            "and budget (met also when the example does not fit the budget)",
            "met": verdict([r["met"] for r in speed_rows]),
            "pairs": speed_rows,
        },
        "planner_within_15pct": {
            "target": f"planner peak estimate within ±{PLANNER_TOLERANCE:.0%} of the measured peak "
            "reserved, in every cell that ran",
            "met": verdict([r["met"] for r in planner_rows]),
            "cells": planner_rows,
        },
        "longest_context_fits": {
            "target": "the planner's longest cutoff_len (ftw plan --max-context: micro-batch 1, checkpoints "
            f"offloaded) trains within {FIT_TARGET:.0%} of the profile's memory; the +10% cell beside it is "
            "informational (fitting too means the planner leaves more than 10% of the context unused)",
            "met": verdict([r["met"] for r in context_rows]),
            "cells": context_rows,
        },
    }


def write_results(path: Path, header: dict, new_cells: list[dict]) -> dict:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    cells = {cell_key(c): c for c in data.get("cells", [])}
    for cell in new_cells:
        cells[cell_key(cell)] = cell
    commands = list(data.get("commands", []))
    if header["command"] not in commands:
        commands.append(header["command"])
    data.update(
        header, commands=commands, cells=sorted(cells.values(), key=lambda c: (c["model"], c["memory_gb"], c["kind"]))
    )
    data["targets"] = targets(data["cells"])
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".partial")
    staging.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    staging.replace(path)
    return data


def print_table(con, data: dict) -> None:
    from rich.table import Table

    def fmt(value, spec="", none="—"):
        return none if value is None else format(value, spec)

    table = Table(title=f"bench/profiles.py on {data['gpu']} (peak {fmt(data['peak_bf16_tflops'])} TFLOP/s bf16)")
    for column in (
        "kind",
        "model",
        "profile",
        "method",
        "micro×acc",
        "cutoff",
        "ckpt",
        "offload",
        "fits",
        "alloc GiB",
        "reserved GiB",
        "% of budget",
        "planner GiB",
        "planner err",
        "tokens/s",
        "MFU",
        "× example",
    ):
        table.add_column(column, justify="right" if column not in ("kind", "model", "profile", "method") else "left")
    speed = {(p["model"], p["profile"]): p for p in data["targets"]["speedup_vs_example"]["pairs"]}
    for c in data["cells"]:
        fits = "error" if c.get("fits") is None else ("yes" if c["fits"] else "OOM" if c.get("oom") else "no")
        pair = speed.get((c["model"], c["profile"])) if c["kind"] == "ftw" else None
        ratio = (
            f"{pair['speedup']:.2f}"
            if pair and pair["speedup"]
            else "example OOM"
            if pair and pair.get("example_oom")
            else "—"
        )
        table.add_row(
            KIND_LABELS.get(c["kind"], c["kind"]),
            c["model"].split("/")[-1],
            c["profile"],
            c.get("method", "?"),
            f"{c.get('micro_batch') or '?'}×{c.get('grad_accum') or '?'}",
            fmt(c.get("cutoff"), ","),
            {True: "on", False: "off"}.get(c.get("gradient_checkpointing"), "—"),
            {True: f"on {fmt(c.get('host_ram_gb'), '.2f')} GiB", False: "off"}.get(c.get("offload_checkpoints"), "—"),
            fits,
            fmt(c.get("peak_allocated_gb"), ".2f"),
            fmt(c.get("peak_reserved_gb"), ".2f"),
            fmt(c["budget_fraction"] * 100 if c.get("budget_fraction") else None, ".0f"),
            fmt(c.get("planner_peak_gb"), ".2f"),
            fmt(c["planner_error"] * 100 if c.get("planner_error") is not None else None, "+.0f")
            + ("%" if c.get("planner_error") is not None else ""),
            fmt(c.get("tokens_per_s"), ",.0f"),
            fmt(c["mfu"] * 100 if c.get("mfu") else None, ".1f"),
            ratio,
        )
    con.print(table)
    if data.get("smoke"):
        con.print(
            "[yellow]--cpu-smoke: a tiny model on the CPU without a memory cap; these numbers check the "
            "plumbing, they measure nothing about the targets[/yellow]"
        )
    for name, target in data["targets"].items():
        met = target["met"]
        mark = (
            "[green]met[/green]" if met else "[red]not met[/red]" if met is False else "[yellow]not measured[/yellow]"
        )
        con.print(f"  {name}: {mark} — {target['target']}")
    for row in data["targets"]["longest_context_fits"]["cells"]:
        plus10 = {True: "fits", False: "does not fit"}.get(row["plus10_fits"], "not run")
        con.print(
            f"  longest context {row['model'].split('/')[-1]} on {row['profile']}: {row['cutoff']:,} tokens "
            f"{'fits' if row['fits'] else 'does not fit' if row['fits'] is False else 'not run'}; "
            f"+10% ({fmt(row['plus10_cutoff'], ',')}) {plus10}"
        )
    for c in data["cells"]:
        if c.get("error") and not c.get("oom"):
            con.print(f"[red]error[/red] {c['kind']} {c['model']} {c['profile']}: {c['error'][-1500:]}")


# --- main ---------------------------------------------------------------------------------


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"hub ids in recipes/models.yaml (default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--profiles", nargs="+", default=None, help=f"GPU profiles (default: {' '.join(DEFAULT_PROFILES)})"
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=None,
        choices=list(KIND_GROUPS),
        help="ftw's rendered recipe, LLaMA-Factory's QLoRA example, the planner's longest context and "
        f"+10%% (max-context) (default: {' '.join(DEFAULT_KINDS)}; --cpu-smoke: all)",
    )
    parser.add_argument(
        "--part",
        default=None,
        metavar="K/N",
        help="run only part K of the selected cells cut into N parts of about equal estimated time "
        "(a part is a contiguous run of cells in the order --list shows): one device slot each",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the cells, their estimated GPU seconds and their parts (with --part: that part; "
        f"without: the fewest parts of at most --time-budget or {SLOT_S:g} s each), then exit; needs no GPU",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per cell; the first is warm-up (default 6, smoke {SMOKE_STEPS})",
    )
    parser.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        help="where tokenizers, random models, data and runs are built (default: .cache/bench-profiles)",
    )
    parser.add_argument("--out", default=None, help="results folder (default: bench/results; smoke: a new temp folder)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="this GPU's dense bf16 peak, if not in the table"
    )
    parser.add_argument("--vocab-dir", default=str(VOCAB_DIR), help="llama.cpp's models/ folder with ggml-vocab-*.gguf")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="seconds: start no further cell once this much time would be exceeded (e.g. 540 in a "
        "10-minute device slot); results so far are written, exit code 3",
    )
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=300,
        help="seconds before a cell's training process is killed (the longest max-context cells: 420)",
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help=f"no GPU: the whole plumbing with a tiny Qwen3-shaped model, cutoff {SMOKE_CUTOFF}, "
        f"profile {SMOKE_PROFILE}, no memory cap; results in a temp folder",
    )
    options = parser.parse_args(argv)
    options.part_number = options.part_count = None
    if options.part:
        match = re.fullmatch(r"(\d+)/(\d+)", options.part)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            parser.error(f"--part {options.part}: give K/N with 1 <= K <= N, e.g. --part 1/4")
        options.part_number, options.part_count = int(match[1]), int(match[2])
    if options.cpu_smoke:
        options.models = options.models or [SMOKE_MODEL]
        options.profiles = options.profiles or [SMOKE_PROFILE]
        options.kinds = options.kinds or list(KIND_GROUPS)
        options.steps = options.steps or SMOKE_STEPS
        options.cutoff = SMOKE_CUTOFF
        if not options.list:
            options.out = options.out or tempfile.mkdtemp(prefix="bench-profiles-smoke-")
        if options.out and Path(options.out).resolve() == DEFAULT_OUT.resolve():
            parser.error("--cpu-smoke results never go to bench/results (they are not measurements)")
    else:
        options.models = options.models or DEFAULT_MODELS
        options.profiles = options.profiles or DEFAULT_PROFILES
        options.kinds = options.kinds or list(DEFAULT_KINDS)
        options.steps = options.steps or 6
        options.cutoff = 2048
        options.out = options.out or str(DEFAULT_OUT)
    if options.steps < WARMUP_STEPS + 1:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 1} (the first step is warm-up, not timed)")
    return options


def main(argv: list[str]) -> int:
    if argv[:1] in (["--_prepare"], ["--_train"]):
        return child_main(argv[0], argv[1])
    options = parse(argv)
    command = shlex.join([sys.executable, *sys.argv])
    con = console()
    started = time.perf_counter()

    # The cells, their rough GPU seconds and the parts: planner arithmetic, no GPU, no model built.
    specs = cell_specs(options)
    estimate_peak = ESTIMATE_PEAK_TFLOPS  # not --peak-tflops: the parts of a --part K/N stay the same everywhere
    estimates = [estimate(spec, estimate_peak) for spec in specs]
    seconds, settings = [e[0] for e in estimates], [e[1] for e in estimates]
    count = options.part_count or (parts_for_slot(specs, seconds, options.time_budget or SLOT_S) if options.list else 1)
    parts = split_parts(specs, seconds, count)
    if options.list:
        print_estimates(con, specs, seconds, settings, parts, options.part_number, estimate_peak)
        if not options.part_count:
            con.print(
                f"{count} part(s) of at most {options.time_budget or SLOT_S:g} s by these estimates: "
                f"--part 1/{count} ... --part {count}/{count}"
            )
        return 0
    chosen = parts[options.part_number - 1] if options.part_number else list(range(len(specs)))
    if not chosen:
        con.print(f"part {options.part} holds no cell (the estimates fit the cells in fewer parts)")
        return 0
    print_estimates(con, specs, seconds, settings, parts, options.part_number, estimate_peak)
    specs = [specs[i] for i in chosen]

    cache = Path(options.cache).resolve()
    options.cache = str(cache)
    hubs = sorted({spec.hub for spec in specs}, key=options.models.index)
    configs = {hub: model_config_for(hub, options.cpu_smoke) for hub in hubs}
    from wrapper.config.recipes import load_recipe

    templates = {hub: load_recipe(str(shipped_recipe_for(hub))).model.template for hub in hubs}
    con.print(f"preparing tokenizers and random-weight models in {cache} (cached after the first time)")
    gpu, error, elapsed = run_child(
        "--_prepare",
        {"cache": str(cache), "smoke": options.cpu_smoke, "models": configs, "vocab_dir": options.vocab_dir},
        cache / "logs" / "prepare.log",
        timeout=1800,
    )
    if gpu is None or gpu.get("error"):
        con.print(f"[red]error:[/red] {error or gpu['error']}")
        return 2
    con.print(f"  ready in {elapsed:.0f} s: {gpu.get('gpu', 'CPU (smoke)')}")
    peak = options.peak_tflops or (peak_tflops_for(gpu["gpu"]) if gpu.get("cuda") else None)
    if gpu.get("cuda") and peak is None:
        con.print(
            f"[yellow]warning:[/yellow] no dense bf16 peak known for {gpu['gpu']}; MFU is left out (pass --peak-tflops)"
        )

    bench = Bench(options, gpu, peak, command)
    # The longest context asked again of the bench's own recipe copy, on the model it trains: the same
    # shapes as the shipped recipe's on a GPU; the tiny model's under --cpu-smoke.
    contexts: dict = {}
    for spec in specs:
        if spec.context is None:
            continue
        if (spec.hub, spec.profile) not in contexts:
            recipe = bench.recipe_copy(spec.hub, Path(gpu["models"][spec.hub]))
            clamp = SMOKE_MAX_CONTEXT if options.cpu_smoke else None
            contexts[(spec.hub, spec.profile)] = longest_context(str(recipe), spec.profile, clamp)
        spec.context = contexts[(spec.hub, spec.profile)]
        longest = spec.context["cutoff"]
        spec.cutoff = longest if spec.kind == "max_context" else plus_cutoff(longest)
        spec.error = (
            None
            if spec.context["planner_longest_cutoff"]
            else f"the planner fits no cutoff_len at all for {spec.hub} on {spec.profile}"
        )
    for spec in specs:
        bench.dataset(spec.cutoff, spec.rows)
    rendered = {}
    to_render = [spec for spec in specs if spec.kind != "llamafactory-example"]
    if to_render:  # renders need no GPU: all of them side by side, before any training
        from concurrent.futures import ThreadPoolExecutor

        con.print(f"rendering {len(to_render)} run(s) with ftw render")
        with ThreadPoolExecutor(max(1, min(4, (os.cpu_count() or 2) // 2))) as pool:
            done = pool.map(lambda spec: bench.render_ftw(spec, Path(gpu["models"][spec.hub])), to_render)
            rendered = {id(spec): result for spec, result in zip(to_render, done)}
    name = "profiles-cpu-smoke.json" if options.cpu_smoke else f"profiles-{gpu_slug(gpu['gpu'])}.json"
    header = {
        "command": command,
        "argv": [sys.executable, *sys.argv],
        "gpu": gpu.get("gpu", "cpu"),
        "gpu_memory_gb": round(gpu["total_memory_bytes"] / GIB, 2) if gpu.get("cuda") else None,
        "compute_capability": gpu.get("compute_capability"),
        "peak_bf16_tflops": peak,
        "smoke": options.cpu_smoke,
        "written_at": now(),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        **versions(),
        "method_notes": {
            "budget": "PyTorch's allocator is capped at the profile's memory_gb GiB with "
            "torch.cuda.set_per_process_memory_fraction in the training process; the CUDA context "
            "and bitsandbytes' paged (managed) memory are outside that cap (device_used_gb shows the "
            "device's used memory at step ends, all of it)",
            "peaks": "peak_*_gb: whole process (model loading and training); train_peak_*_gb: from the first "
            "step on; planner_error compares peak_reserved_gb with the planner's estimate",
            "tokens_per_s": f"steps after {WARMUP_STEPS} warm-up step(s), every sample exactly cutoff tokens, "
            "measured on THIS GPU with the profile's memory cap: the memory verdicts carry over "
            "to the profile's card, the speed does not (compare MFU instead)",
            "mfu": "tokens/s x planner.train_flops_per_token (recompute included under gradient "
            "checkpointing) / this GPU's dense bf16 peak",
            "offload": "offload_checkpoints: the rendered train.yaml's use_unsloth_gc (LLaMA-Factory keeps each "
            "checkpointed layer input in host RAM); host_ram_gb: the planner's estimate of that host RAM",
            "max_context": f"max_context: trained at the planner's longest cutoff_len (ftw plan --max-context "
            f"--profile P: micro-batch 1, checkpoints offloaded), pinned with --set cutoff_len, "
            f"per_device_train_batch_size=1, gradient_accumulation_steps={MAX_CONTEXT_ACCUM} and "
            f"use_unsloth_gc=true; max_context_plus10: the same at +{MAX_CONTEXT_PLUS:.0%}",
        },
    }
    path = Path(options.out) / name
    cells, left, longest, data = [], [], 0.0, None
    for spec in specs:
        elapsed = time.perf_counter() - started
        if options.time_budget and elapsed + longest * 1.2 > options.time_budget:
            left.append(spec)
            continue
        cell_started = time.perf_counter()
        model_dir = Path(gpu["models"][spec.hub])
        cutoff = f" at cutoff {spec.cutoff:,}" if spec.context else ""
        con.print(f"[bold]{KIND_LABELS[spec.kind]}[/bold] {spec.hub} on {spec.profile}{cutoff} ...")
        if spec.kind == "llamafactory-example":
            cells.append(bench.example_cell(spec, model_dir, templates[spec.hub]))
        else:
            cells.append(bench.ftw_cell(*rendered[id(spec)], model_dir))
        longest = max(longest, time.perf_counter() - cell_started)
        _say(con, cells[-1])
        data = write_results(path, dict(header, written_at=now()), cells)  # after every cell: a killed run keeps them
    if not cells:
        con.print("[red]error:[/red] no cell ran")
        return 2
    print_table(con, data)
    con.print(f"results: {path}  ({time.perf_counter() - started:.0f} s)")
    if left:
        con.print(
            f"[yellow]--time-budget {options.time_budget:g} s reached; not run:[/yellow] "
            + ", ".join(spec.label for spec in left)
        )
        return 3
    return 0 if all(c.get("fits") is not None for c in cells) else 1


def _say(con, cell: dict) -> None:
    if cell.get("offload_checkpoints"):
        con.print(f"  checkpoints offloaded to host RAM (use_unsloth_gc): planner ~{cell.get('host_ram_gb')} GiB")
    if cell.get("fits"):
        memory = (
            f"peak reserved {cell['peak_reserved_gb']} GiB of {cell['memory_gb']:g}, "
            if cell.get("peak_reserved_gb") is not None
            else ""
        )
        con.print(
            f"  fits: {memory}planner {cell.get('planner_peak_gb')} GiB, {cell.get('tokens_per_s')} tokens/s, "
            f"{cell['wall_s']} s"
        )
    elif cell.get("oom"):
        con.print(f"  [yellow]OOM[/yellow] within {cell['memory_gb']:g} GiB ({cell['wall_s']} s)")
    else:
        con.print(f"  [red]error[/red] ({cell.get('wall_s', 0)} s): {(cell.get('error') or '')[-800:]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
