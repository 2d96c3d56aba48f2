"""The bench's child processes: preparing the tokenizers and random-weight models (`prepare`), and
training one cell under the profile's memory cap (`train`). Each reads a spec file and writes a result
file; `python -m bench.profiles.child MODE SPEC.json` is how run_child starts one."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from wrapper.config.planner import ModelShape
from wrapper.core.fsutil import staged_dir

from .settings import GIB, WARMUP_STEPS, load_yaml_like_llamafactory, now, slug
from tests.support.models import llama31_tokenizer_dir, qwen2_tokenizer_dir
from tests.support.runner import REPO

# The tokenizer of each model family (tests/support/models.py, built once from llama.cpp's vocabulary files).
TOKENIZER_OF_FAMILY = {"qwen2": qwen2_tokenizer_dir, "llama3": llama31_tokenizer_dir}
FAMILY_OF_MODEL_TYPE = {"qwen2": "qwen2", "qwen3": "qwen2", "llama": "llama3"}


def run_child(mode: str, spec: dict, log: Path, timeout: float) -> tuple[dict | None, str | None, float]:
    """This module in `mode` (prepare, train) in a fresh process; (its result JSON or None, an error or None,
    seconds)."""
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
            [sys.executable, "-m", "bench.profiles.child", mode, str(spec_path)],
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
    tokenizers = dict(zip(families, tokenizer_dirs(families)))
    for hub_id, config in spec["models"].items():
        target = cache / "models" / (slug(hub_id) + ("-smoke" if spec["smoke"] else "") + "-random")
        device = "cpu"
        if info["cuda"]:
            free, _ = torch.cuda.mem_get_info()
            device = "cuda" if ModelShape.from_config(config).params * 2 * 1.2 < free else "cpu"
        # --cpu-smoke trains on the CPU, where bfloat16 weights take PyTorch's reference gemm unless the CPU has
        # fast bfloat16 (wrapper/core/cpu.py): its tiny models are float32, since no number of it is a measurement.
        dtype = "float32" if spec["smoke"] else "bfloat16"
        ensure_random_model(config, tokenizers[FAMILY_OF_MODEL_TYPE[config["model_type"]]], target, device, dtype)
        info["models"][hub_id] = str(target)
    return info


def tokenizer_dirs(families: list[str]) -> list[Path]:
    """The families' tokenizers, built side by side in spawned processes where there are several (~40-50 s
    each, single-threaded, the first time; a cached one returns at once)."""
    builders = [TOKENIZER_OF_FAMILY[family] for family in families]
    if len(builders) < 2:
        return [build() for build in builders]
    with ProcessPoolExecutor(len(builders), mp_context=multiprocessing.get_context("spawn")) as pool:
        return [future.result() for future in [pool.submit(build) for build in builders]]


def ensure_random_model(config: dict, tokenizer_dir: Path, target: Path, device: str, dtype: str) -> Path:
    marker = target / "bench-profiles.json"
    built = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
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
        (out / "bench-profiles.json").write_text(marker_text, encoding="utf-8")

    if not target.is_dir():
        with staged_dir(target) as out:
            build(out)
    return target


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
    result = child_prepare(spec) if mode == "prepare" else child_train(spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1], sys.argv[2]))
