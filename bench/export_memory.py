"""Peak memory and wall time of the export path: LLaMA-Factory's vs ftw's streaming merge.

Builds (once, cached in .cache/bench/) a random-init model with a real layer shape
(default: Qwen2.5-3B's, bf16, 4 safetensors shards, the real Qwen2 tokenizer) and a
random rank-16 LoRA on every linear layer, then runs side by side:

  (a) llamafactory-cli export -> convert_hf_to_gguf f16 -> llama.cpp quantize Q4_K_M
  (b) python -m wrapper.export.merge weights (2-D weights stored as float16, `ftw export`'s default)
      + tokenizer -> the same convert -> the same quantizer, in slabs of rows
      (wrapper/quantize.py's MAX_BUF_BYTES) as `ftw gguf` runs it

Each stage is a child process; the whole process tree is sampled every 50 ms for VmRSS
(which counts resident pages of memory-mapped files) and RssAnon (which does not).
Prints a table and writes bench/results/export_memory.json.

  .venv/bin/python bench/export_memory.py   # ~15 min on 2 cores the first time (it builds the model), ~7 after
  .venv/bin/python bench/export_memory.py --shape qwen3-8b --layers 4 --ours-only
      # Qwen3-8B's tensors with 4 of its 36 layers: the peak is set by the largest tensor, not the layer count
  .venv/bin/python bench/export_memory.py --shape qwen2.5-1.5b --ours-only --imatrix
      # ftw gguf --imatrix's path: llama-imatrix on the f16 GGUF (2 chunks of 512 tokens; the memory
      # doesn't grow with the chunk count), then llama-quantize --imatrix in 256 MiB slabs (make tools first)
  .venv/bin/python bench/export_memory.py --ours-only --imatrix --memory-cap 0.25
      # the same with every stage in a cgroup limited to 0.25x the model, page cache included
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil

from repo_path import REPO

CACHE = REPO / ".cache" / "bench"
RESULTS = REPO / "bench" / "results" / "export_memory.json"
LLAMA_CPP = REPO / "vendor" / "llama.cpp"

SHAPES = {
    "qwen2.5-1.5b": dict(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2.5-3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    # Qwen3-8B's tensor shapes (built as a Qwen2 model: the same shapes for what costs memory);
    # with --layers, fewer decoder layers of those shapes, for machines without 50 GB of disk.
    "qwen3-8b": dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
}
# The largest shape of the 1.5-3B range: fixed costs (Python, torch, the tokenizer)
# weigh less against it, as they do against an 8B model.
DEFAULT_SHAPE = "qwen2.5-3b"
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARDS = 4
RANK, ALPHA = 16, 32


def write_safetensors(path: Path, tensors: dict) -> None:
    import torch

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {
            "dtype": {torch.bfloat16: "BF16", torch.float32: "F32"}[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for t in tensors.values():
            out.write(t.contiguous().view(torch.uint8).numpy().tobytes())


def build_model(out: Path, shape: dict) -> None:
    """Random bf16 weights written shard by shard (never the whole model in memory)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tests.support.models import ENDOFTEXT, IM_END, qwen2_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(qwen2_tokenizer_dir())
    config = Qwen2Config(
        **shape,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
    )
    config.dtype = torch.bfloat16
    config.architectures = ["Qwen2ForCausalLM"]
    with torch.device("meta"):
        names = {n: tuple(p.shape) for n, p in Qwen2ForCausalLM(config).state_dict().items()}
    if shape["tie_word_embeddings"]:
        names.pop("lm_head.weight", None)
    total = sum(math.prod(s) * 2 for s in names.values())
    per_shard, shard, size, weight_map = total / SHARDS, {}, 0, {}
    generator = torch.Generator().manual_seed(0)
    files = [f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors" for i in range(SHARDS)]
    index = 0
    for name, s in names.items():
        if name.endswith("norm.weight"):
            t = torch.ones(s, dtype=torch.bfloat16)
        elif name.endswith("bias"):
            t = (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16)
        else:
            t = (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16)
        shard[name] = t
        weight_map[name] = files[index]
        size += t.numel() * 2
        if size >= per_shard * (index + 1) and index < SHARDS - 1:
            write_safetensors(out / files[index], shard)
            shard, index = {}, index + 1
    write_safetensors(out / files[index], shard)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_adapter(out: Path, model_dir: Path, shape: dict) -> None:
    import torch
    from peft import LoraConfig

    generator = torch.Generator().manual_seed(1)
    tensors = {}
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    dims = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    for layer in range(shape["num_hidden_layers"]):
        for module in LINEAR:
            kind = "self_attn" if module in LINEAR[:4] else "mlp"
            fan_in, fan_out = dims[module]
            key = f"base_model.model.model.layers.{layer}.{kind}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, fan_in, generator=generator) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, RANK, generator=generator) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "adapter_model.safetensors", tensors)
    LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=list(LINEAR),
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(model_dir),
    ).save_pretrained(out)


def shape_of(name: str, layers: int | None) -> dict:
    return {**SHAPES[name], **({"num_hidden_layers": layers} if layers else {})}


def prepare(name: str, layers: int | None) -> tuple[Path, Path]:
    label = f"{name}-L{layers}" if layers else name
    model_dir, adapter_dir = CACHE / label, CACHE / f"{label}-lora{RANK}"
    if not (model_dir / "model.safetensors.index.json").is_file():
        staging = CACHE / f".{label}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        build_model(staging, shape_of(name, layers))
        staging.rename(model_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        shutil.rmtree(adapter_dir, ignore_errors=True)
        build_adapter(adapter_dir, model_dir, shape_of(name, layers))
    return model_dir, adapter_dir


def rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemoryCap:
    """A cgroup (v1) memory limit every stage runs in. It counts the page cache the stage's
    memory maps fill, so a stage that completes under it needs no more RAM than that."""

    ROOT = Path("/sys/fs/cgroup/memory")

    def __init__(self, limit_bytes: int):
        if not (self.ROOT / "memory.limit_in_bytes").is_file():
            raise SystemExit("--memory-cap needs the cgroup v1 memory controller at /sys/fs/cgroup/memory")
        self.dir = self.ROOT / f"ftw-bench-{os.getpid()}"
        self.dir.mkdir(exist_ok=True)
        (self.dir / "memory.limit_in_bytes").write_text(str(limit_bytes))
        self.limit_bytes = limit_bytes

    def wrap(self, argv: list[str]) -> list[str]:
        """argv, started inside the group (the shell joins it, then becomes the stage)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.dir / "cgroup.procs"), *argv]

    def reset(self) -> None:
        (self.dir / "memory.max_usage_in_bytes").write_text("0")

    def peak(self) -> int:
        return int((self.dir / "memory.max_usage_in_bytes").read_text())

    def close(self) -> None:
        self.dir.rmdir()


CAP: MemoryCap | None = None


def run_stage(argv: list[str], log: Path, env: dict | None = None) -> dict:
    """Run argv (inside CAP when set); sample its process tree every 50 ms; return peaks and wall time."""
    peak_rss = peak_anon = 0
    if CAP:
        CAP.reset()
        argv = CAP.wrap(argv)
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        start = time.perf_counter()
        child = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = anon = 0
            for proc in procs:
                try:
                    rss += proc.memory_info().rss
                    anon += rss_anon(proc.pid)
                except psutil.NoSuchProcess:
                    pass
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"stage failed ({child.returncode}): {' '.join(argv)}; see {log}")
    result = {"peak_rss_bytes": peak_rss, "peak_rss_anon_bytes": peak_anon, "seconds": round(seconds, 1)}
    return result | ({"cgroup_peak_bytes": CAP.peak()} if CAP else {})


def convert_argv(merged: Path, outfile: Path) -> list[str]:
    return [
        sys.executable,
        str(LLAMA_CPP / "convert_hf_to_gguf.py"),
        str(merged),
        "--outtype",
        "f16",
        "--outfile",
        str(outfile),
    ]


def quantize_argv(src: Path, dst: Path, max_buf_bytes: int) -> list[str]:
    """llama.cpp's quantizer; max_buf_bytes 0 is its default (a whole tensor at a time), as llama-quantize runs."""
    from gguf import LlamaFileType

    return [
        sys.executable,
        "-m",
        "wrapper.gguf.quantize",
        str(src),
        str(dst),
        str(int(LlamaFileType.MOSTLY_Q4_K_M)),
        str(max_buf_bytes),
    ]


def imatrix_stages(f16: Path, q4: Path, work: Path, log: Path) -> dict:
    """`ftw gguf --imatrix` after the conversion: the matrix from the f16 GGUF, then llama-quantize with it."""
    from wrapper.core.llama_tools import tool
    from wrapper.gguf.quantize import MAX_BUF_BYTES

    text = work / "calibration.txt"
    text.write_text((REPO / "data" / "demo_lore.json").read_text(encoding="utf-8") * 8, encoding="utf-8")
    matrix = work / "imatrix.gguf"
    threads = str(os.cpu_count())
    imatrix = [str(tool("llama-imatrix")), "-m", str(f16), "-f", str(text), "-o", str(matrix)]
    imatrix += ["--output-format", "gguf", "-c", "512", "--chunks", "2", "--parse-special", "-t", threads, "--no-ppl"]
    quantize = [str(tool("llama-quantize")), "--imatrix", str(matrix), "--max-buffer-size", str(MAX_BUF_BYTES // 2**20)]
    quantize += [str(f16), str(q4), "Q4_K_M", threads]
    stages = {"imatrix": run_stage(imatrix, log), "quantize_q4_k_m_imatrix": run_stage(quantize, log)}
    matrix.unlink()
    return stages


def path_stages(
    kind: str, model_dir: Path, adapter_dir: Path, work: Path, log: Path, with_imatrix: bool = False
) -> dict:
    gguf_env = {"PYTHONPATH": str(LLAMA_CPP / "gguf-py"), "NO_LOCAL_GGUF": ""}
    merged = work / f"{kind}-merged"
    shutil.rmtree(merged, ignore_errors=True)
    export_yaml = work / f"{kind}-export.yaml"
    export_yaml.write_text(
        json.dumps(
            {
                "model_name_or_path": str(model_dir),
                "adapter_name_or_path": str(adapter_dir),
                "template": "qwen",
                "finetuning_type": "lora",
                "export_dir": str(merged),
                "export_size": 5,
                "export_device": "cpu",
                "export_legacy_format": False,
                "trust_remote_code": True,
            }
        )
    )
    stages = {}
    if kind == "llamafactory":
        stages["merge"] = run_stage(
            ["llamafactory-cli", "export", str(export_yaml)],
            log,
            {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
    else:
        stages["merge"] = run_stage(
            [
                sys.executable,
                "-m",
                "wrapper.export.merge",
                "weights",
                str(model_dir),
                str(adapter_dir),
                str(merged),
                "f16",
            ],
            log,
        )
        stages["tokenizer"] = run_stage(
            [sys.executable, "-m", "wrapper.export.merge", "tokenizer", str(export_yaml), str(merged)], log
        )
    f16, q4 = work / f"{kind}-f16.gguf", work / f"{kind}-Q4_K_M.gguf"
    stages["convert_f16"] = run_stage(convert_argv(merged, f16), log, gguf_env)
    from wrapper.gguf.quantize import MAX_BUF_BYTES

    max_buf_bytes = 0 if kind == "llamafactory" else MAX_BUF_BYTES
    if kind == "ours" and with_imatrix:
        stages.update(imatrix_stages(f16, q4, work, log))
    else:
        stages["quantize_q4_k_m"] = run_stage(quantize_argv(f16, q4, max_buf_bytes), log)
    sizes = {
        "merged_bytes": sum(p.stat().st_size for p in merged.glob("*.safetensors")),
        "f16_gguf_bytes": f16.stat().st_size,
        "q4_k_m_gguf_bytes": q4.stat().st_size,
    }
    return {"stages": stages, "sizes": sizes, "q4": q4, "cleanup": [merged, f16]}


def greedy_tokens(path: Path) -> list[int]:
    from wrapper.runtime.models import GgufModel

    model = GgufModel(path)
    try:
        return model.greedy([9707, 11, 1879, 0], stop_ids=set(), max_tokens=8)
    finally:
        model.close()


def summarise(result: dict) -> dict:
    stages = result["stages"]
    return {
        "peak_rss_bytes": max(s["peak_rss_bytes"] for s in stages.values()),
        "peak_rss_anon_bytes": max(s["peak_rss_anon_bytes"] for s in stages.values()),
        "seconds": round(sum(s["seconds"] for s in stages.values()), 1),
        "stages": stages,
        "sizes": result["sizes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=DEFAULT_SHAPE)
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="Build only this many decoder layers of the shape (the tensors keep their real sizes).",
    )
    parser.add_argument(
        "--ours-only",
        action="store_true",
        help="Run ftw's path only (no LLaMA-Factory path, which loads the whole model into memory).",
    )
    parser.add_argument(
        "--imatrix",
        action="store_true",
        help="ftw's path as `ftw gguf --imatrix` runs it: llama-imatrix, then llama-quantize --imatrix.",
    )
    parser.add_argument(
        "--memory-cap",
        type=float,
        default=None,
        help="Run every stage in a cgroup memory limit of this fraction of the model's size (page cache "
        "included): does the path complete within it, and how much slower? (cgroup v1, as root)",
    )
    parser.add_argument("--work", type=Path, default=CACHE / "work")
    args = parser.parse_args()

    model_dir, adapter_dir = prepare(args.shape, args.layers)
    model_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    global CAP
    if args.memory_cap:
        CAP = MemoryCap(int(args.memory_cap * model_bytes))
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "bench.log"
    log.unlink(missing_ok=True)
    kinds = ("ours",) if args.ours_only else ("llamafactory", "ours")
    results, q4s = {}, {}
    for kind in kinds:
        print(f"running {kind} ...", flush=True)
        done = path_stages(kind, model_dir, adapter_dir, args.work, log, args.imatrix)
        results[kind] = summarise(done)
        q4s[kind] = done["q4"]
        for path in done["cleanup"]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    same_tokens = greedy_tokens(q4s["llamafactory"]) == greedy_tokens(q4s["ours"]) if "llamafactory" in q4s else None
    for path in q4s.values():
        path.unlink()

    shape = shape_of(args.shape, args.layers)
    report = {
        "command": " ".join([".venv/bin/python", "bench/export_memory.py", *sys.argv[1:]]),
        "model": {
            "shape": args.shape,
            **shape,
            "dtype": "bfloat16",
            "shards": SHARDS,
            "lora": {"r": RANK, "lora_alpha": ALPHA, "target_modules": list(LINEAR)},
        },
        "model_bf16_bytes": model_bytes,
        **({"memory_cap_bytes": CAP.limit_bytes} if CAP else {}),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(),
        },
        "sampling": "whole process tree every 50 ms; peak_rss = VmRSS (includes resident mmapped file pages), "
        "peak_rss_anon = RssAnon",
        **({"q4_k_m_greedy_tokens_identical": same_tokens} if same_tokens is not None else {}),
        **results,
    }
    report["ratios"] = {
        "ours_peak_rss_to_model": round(results["ours"]["peak_rss_bytes"] / model_bytes, 3),
        "ours_peak_rss_anon_to_model": round(results["ours"]["peak_rss_anon_bytes"] / model_bytes, 3),
    }
    if "llamafactory" in results:
        report["ratios"].update(
            {
                "llamafactory_peak_rss_to_model": round(results["llamafactory"]["peak_rss_bytes"] / model_bytes, 3),
                "ours_time_to_llamafactory": round(results["ours"]["seconds"] / results["llamafactory"]["seconds"], 3),
            }
        )
    if CAP:
        CAP.close()
    results_file = results_path(args.shape, args.layers, args.ours_only, args.imatrix, args.memory_cap)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(report, indent=2) + "\n")

    gb = 1e9
    print(
        f"\nmodel: {args.shape}{f' ({args.layers} layers)' if args.layers else ''}, {model_bytes / gb:.2f} GB bf16"
        + (f"; Q4_K_M greedy tokens identical: {same_tokens}" if same_tokens is not None else "")
    )
    print(
        f"{'path':<13} {'stage':<16} {'peak VmRSS':>11} {'x model':>8} {'peak RssAnon':>13} {'x model':>8} {'wall s':>7}"  # noqa: E501
    )
    for kind in kinds:
        rows = list(results[kind]["stages"].items()) + [("whole path", results[kind])]
        for stage, s in rows:
            print(
                f"{kind:<13} {stage:<16} {s['peak_rss_bytes'] / gb:>9.2f}GB {s['peak_rss_bytes'] / model_bytes:>8.2f} "
                f"{s['peak_rss_anon_bytes'] / gb:>11.2f}GB {s['peak_rss_anon_bytes'] / model_bytes:>8.2f} {s['seconds']:>7.1f}"  # noqa: E501
            )
    print(f"\nwrote {results_file}")


def results_path(
    shape: str, layers: int | None, ours_only: bool, imatrix: bool = False, cap: float | None = None
) -> Path:
    """The default comparison keeps its historic name; other runs get their own file beside it."""
    if shape == DEFAULT_SHAPE and not layers and not ours_only and not imatrix and not cap:
        return RESULTS
    suffix = f"-L{layers}" if layers else ""
    options = ("-ours" if ours_only else "") + ("-imatrix" if imatrix else "") + (f"-cap{cap:g}" if cap else "")
    return RESULTS.with_name(f"export_memory-{shape}{suffix}{options}.json")


if __name__ == "__main__":
    main()
