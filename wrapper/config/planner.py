"""Planner: does a recipe fit a card, with which settings, and how long will an epoch take?

Everything here is arithmetic on the model's shapes, before anything is downloaded or
run. Units: GiB for memory (an "8 GB" card has 8 GiB), tokens for data, seconds for time.

Memory of a LoRA/QLoRA step, as PyTorch's allocator sees it:
- weights: bf16 (2 bytes/param), or for QLoRA the decoder's linear layers in NF4 with
  double quantization (~0.52 bytes/param) while embeddings and lm_head stay bf16
  (bitsandbytes does not quantize them); PEFT's prepare_model_for_kbit_training (not
  LLaMA-Factory's path) would put those in fp32, and the hidden states with them;
- trainable parameters, their gradients and optimizer states: LLaMA-Factory keeps
  trainable params in fp32 (4 + 4 bytes), AdamW adds 8 bytes, an 8-bit AdamW 2 bytes;
- activations: with gradient checkpointing each layer keeps its input (hidden x 2 bytes
  per token) and one layer's full set is alive during its recompute; without it every
  layer keeps its set. A set is ~(8 h + 4 kv + 4 i) bf16 values per token with
  FlashAttention/SDPA (no seq^2 term). Offloaded checkpointing (LLaMA-Factory's
  `use_unsloth_gc`) keeps those layer inputs in host RAM instead, and copies them over
  PCIe once each way per step;
- logits: at the loss's peak, in its backward pass, three fp32 tensors of tokens x vocab
  (12 bytes per value, measured by bench/loss_memory.py), unless Liger's fused linear
  cross-entropy computes the loss in chunks;
- overhead: cuBLAS workspaces and allocator fragmentation.
Throughput: FLOPs per token against the card's dense bf16 peak (vendor figure, fp32
accumulate) at an assumed MFU, or at the MFU bench/profiles measured for that budget.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from wrapper.config.schema import Profile
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import DEFAULT_QUANT, QUANT_BITS
from wrapper.core.paths import BENCH_RESULTS_DIR

GIB = 1024**3
# 4 bits, plus per 64-value block an 8-bit absmax, itself scaled by an fp32 per 256 blocks (double quantization)
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
FIT_FRACTION = 0.92  # of the card's memory; the rest is the CUDA context and headroom
OVERHEAD_GIB = 0.5
OVERHEAD_SHARE = 0.05
ASSUMED_MFU = {"lora": 0.40, "full": 0.40, "qlora": 0.30}  # until bench/profiles measures the card
MICRO_BATCHES = (16, 8, 4, 2, 1)
# Offloaded layer inputs go through pageable (not pinned) host memory: ~half of PCIe 4.0 x16's 32 GB/s.
HOST_COPY_BYTES_PER_S = 12e9
# In the backward pass: the saved fp32 log-softmax, the fp32 gradient coming in and the one going out
# (the bf16 logits and their fp32 copy are gone once the trainer holds the loss); bench/loss_memory.py.
LOSS_BYTES_PER_LOGIT = 4 + 4 + 4
LONGEST_CUTOFF = 1 << 20  # the search's upper end when the model names no context length


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of the seven linear layers of one decoder layer (LoRA target 'all')."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def decoder_linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.decoder_linear_params + self.embedding_params + norms

    def lora_params(self, rank: int) -> int:
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes())


@dataclass
class Settings:
    method: str  # lora | qlora | full
    micro_batch: int
    grad_accum: int
    cutoff: int
    checkpointing: bool
    optimizer_8bit: bool
    liger: bool
    lora_rank: int
    gpus: int = 1
    zero_stage: int = 0
    offload: bool = False  # DeepSpeed's optimizer/parameter offload (several GPUs)
    offload_checkpoints: bool = False  # use_unsloth_gc: checkpointed layer inputs in host RAM
    # PEFT's prepare_model_for_kbit_training, which TRL's SFTTrainer runs on a 4-bit model: every frozen weight
    # that isn't 4-bit (embeddings, lm_head, norms) goes to fp32, and with fp32 embeddings so do the hidden
    # states between layers. LLaMA-Factory never does this (it upcasts the trainable parameters only); the
    # published Hugging Face baselines did (bench/planner_published.py).
    frozen_fp32: bool = False

    @property
    def frozen_bytes(self) -> int:
        """Bytes of an unquantized frozen weight, and so of a hidden state between layers."""
        return 4 if self.frozen_fp32 else 2

    @property
    def checkpoints_offloaded(self) -> bool:
        """Offloading moves what checkpointing keeps: without checkpointing there is nothing to move."""
        return self.checkpointing and self.offload_checkpoints

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.cutoff

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_micro_batch * self.grad_accum * self.gpus


@dataclass
class Memory:
    weights: float
    trainable: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float = 0.0

    @property
    def total(self) -> float:
        return sum(asdict(self).values())


def estimate_memory(shape: ModelShape, s: Settings) -> Memory:
    """Peak GPU memory (GiB) of one training step on one GPU."""
    tokens = s.tokens_per_micro_batch
    weights: float
    trainable: float
    gradients: float
    optimizer: float
    if s.method == "qlora":
        weights = (
            shape.decoder_linear_params * NF4_BYTES_PER_PARAM
            + (shape.params - shape.decoder_linear_params) * s.frozen_bytes
        )
    else:
        weights = shape.params * 2
    if s.method == "full":
        trainable_count = shape.params
        trainable, gradients = trainable_count * 2, trainable_count * 2  # bf16 weights are the trained ones
        optimizer = trainable_count * (2 if s.optimizer_8bit else 4)  # AdamW states in the params' dtype
    else:
        trainable_count = shape.lora_params(s.lora_rank)
        trainable, gradients = trainable_count * 4, trainable_count * 4
        optimizer = trainable_count * (2 if s.optimizer_8bit else 8)
    if s.zero_stage >= 2:
        gradients /= s.gpus
        optimizer = 0 if s.offload else optimizer / s.gpus
    if s.zero_stage == 3:
        # Parameters are partitioned; with offload they live in CPU RAM and about two layers are gathered at a time.
        weights = weights * 2 / shape.layers if s.offload else weights / s.gpus
        trainable /= s.gpus

    kv = shape.kv_heads * shape.head_dim
    layer_set = (8 * shape.hidden + 4 * kv + 4 * shape.intermediate) * 2 * tokens
    if s.checkpointing:
        kept_inputs = 0 if s.checkpoints_offloaded else checkpointed_inputs_bytes(shape, s)
        activations = kept_inputs + layer_set
    else:
        activations = shape.layers * layer_set
    if s.method == "qlora":
        activations += max(a * b for a, b in shape.linear_shapes()) * 2  # one dequantized weight at a time
    logits = tokens * shape.hidden * 8 if s.liger else tokens * shape.vocab * LOSS_BYTES_PER_LOGIT

    parts = Memory(weights / GIB, trainable / GIB, gradients / GIB, optimizer / GIB, activations / GIB, logits / GIB)
    parts.overhead = OVERHEAD_GIB + OVERHEAD_SHARE * parts.total
    return parts


def checkpointed_inputs_bytes(shape: ModelShape, s: Settings) -> float:
    """Each layer's input (bf16, or fp32 after PEFT's upcast) that gradient checkpointing keeps for the
    backward pass, per GPU."""
    return shape.layers * shape.hidden * s.frozen_bytes * s.tokens_per_micro_batch


def host_ram_gb(shape: ModelShape, s: Settings) -> float:
    """Host RAM the offloaded layer inputs take, for all the GPU processes of this machine."""
    if not s.checkpoints_offloaded:
        return 0.0
    return checkpointed_inputs_bytes(shape, s) * s.gpus / GIB


def offload_seconds_per_token(shape: ModelShape, s: Settings) -> float:
    """The copies of an offloaded layer input, out in the forward pass and back in the backward; the
    copy from pageable memory is synchronous, so it adds to the step rather than overlapping it."""
    if not s.checkpoints_offloaded:
        return 0.0
    return 2 * shape.layers * shape.hidden * s.frozen_bytes / HOST_COPY_BYTES_PER_S


def train_flops_per_token(shape: ModelShape, s: Settings) -> float:
    """Training FLOPs per token: forward 2N, backward 2N for activations (+2N weight
    gradients when all weights train), +2N to recompute the forward under checkpointing,
    plus causal attention (QK^T and AV) at the mean position."""
    n = shape.params - shape.vocab * shape.hidden  # the input embedding is a lookup, not a matmul
    passes = 6 if s.method == "full" else 4
    if s.checkpointing:
        passes += 2
    attention = 2 * 2 * shape.layers * (shape.heads * shape.head_dim) * (s.cutoff / 2)
    return n * passes + attention * passes / 2


@dataclass
class GpuProfileFacts:
    name: str
    memory_gb: float
    peak_bf16_tflops: float
    gpus: int = 1

    @property
    def budget_gb(self) -> float:
        return self.memory_gb * FIT_FRACTION


@dataclass
class Choice:
    settings: Settings
    memory: Memory
    fits: bool
    notes: list[str] = field(default_factory=list)
    host_ram_gb: float = 0.0  # offloaded checkpoints, all of this machine's GPU processes


def _candidates(base: Settings, allow_qlora_upgrade: bool, pinned_micro: int | None, offload_choices: tuple):
    methods = [base.method] + (["qlora"] if base.method == "lora" and allow_qlora_upgrade else [])
    effective = base.micro_batch * base.grad_accum  # the recipe's batch, whatever the number of GPUs
    micro_batches = (
        [pinned_micro] if pinned_micro else [m for m in MICRO_BATCHES if m <= max(1, effective // base.gpus)]
    )
    for method in methods:
        for checkpointing in (False, True):
            # Offloading moves what checkpointing keeps, so it exists only with checkpointing.
            for offload in offload_choices if checkpointing else [o for o in offload_choices if not o]:
                for micro in micro_batches:
                    accum = max(1, math.ceil(effective / (micro * base.gpus)))
                    yield replace(
                        base,
                        method=method,
                        micro_batch=micro,
                        grad_accum=accum,
                        checkpointing=checkpointing,
                        offload_checkpoints=offload,
                    )


def speed_score(shape: ModelShape, s: Settings) -> float:
    """Relative tokens/s: FLOPs per token (checkpointing recomputes the forward, 1.5x the work),
    and a GPU under-used below ~4k tokens per micro-batch."""
    utilisation = min(1.0, s.tokens_per_micro_batch / 4096) ** 0.5
    return utilisation / train_flops_per_token(shape, s)


def choose(
    shape: ModelShape,
    base: Settings,
    profile: GpuProfileFacts,
    allow_qlora_upgrade: bool = True,
    pinned_micro: int | None = None,
    pinned_checkpointing: bool | None = None,
    pinned_offload: bool | None = None,
) -> Choice:
    """The fastest settings that fit in the profile's budget. Preference: the recipe's method kept
    in GPU memory, then with checkpoints offloaded to host RAM (a few % slower), then QLoRA the
    same two ways; if nothing fits, the leanest settings with fits=False."""
    leanest: Choice | None = None
    best: dict[tuple[str, bool], Choice] = {}
    offload_choices = (False, True) if pinned_offload is None else (pinned_offload,)
    for candidate in _candidates(base, allow_qlora_upgrade, pinned_micro, offload_choices):
        if pinned_checkpointing is not None and candidate.checkpointing != pinned_checkpointing:
            continue
        memory = estimate_memory(shape, candidate)
        choice = Choice(candidate, memory, memory.total <= profile.budget_gb)
        choice.host_ram_gb = host_ram_gb(shape, candidate)
        key = (candidate.method, candidate.offload_checkpoints)
        if choice.fits:
            current = best.get(key)
            if current is None or speed_score(shape, candidate) > speed_score(shape, current.settings):
                best[key] = choice
        elif leanest is None or memory.total < leanest.memory.total:
            leanest = choice
    for key in ((base.method, False), (base.method, True), ("qlora", False), ("qlora", True)):
        if key in best:
            choice = best[key]
            if key[0] != base.method:
                choice.notes.append(
                    f"{base.method} does not fit in {profile.budget_gb:.1f} GiB: "
                    f"training with 4-bit NF4 weights (QLoRA)"
                )
            if key[1] and pinned_offload is None:
                choice.notes.append(offload_note(shape, choice.settings, profile))
            return choice
    if leanest is None:
        raise FtwError("no training settings to evaluate")
    return leanest


def offload_note(shape: ModelShape, s: Settings, profile: GpuProfileFacts) -> str:
    kept = replace(s, offload_checkpoints=False)
    saved = estimate_memory(shape, kept).total - estimate_memory(shape, s).total
    cost = 1 - tokens_per_second(shape, s, profile)[0] / tokens_per_second(shape, kept, profile)[0]
    return (
        f"only with offloaded checkpointing (use_unsloth_gc) does it fit: each layer's input waits in host RAM "
        f"instead of GPU memory, saving {saved:.2f} GiB of GPU memory for {host_ram_gb(shape, s):.2f} GiB "
        f"of host RAM and ~{cost:.0%} of the throughput"
    )


def longest_cutoff(shape: ModelShape, base: Settings, profile: GpuProfileFacts, offload: bool, cap: int) -> int:
    """The longest cutoff_len that fits at micro-batch 1 with checkpointing (offloaded or not); 0 if none.
    Memory only grows with the cutoff, so a bisection finds it."""

    def fits(cutoff: int) -> bool:
        trial = replace(base, micro_batch=1, cutoff=cutoff, checkpointing=True, offload_checkpoints=offload)
        return estimate_memory(shape, trial).total <= profile.budget_gb

    if not fits(1):
        return 0
    low, high = 1, cap + 1  # fits(low) is true; high is beyond the search
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def tokens_per_second(
    shape: ModelShape, s: Settings, profile: GpuProfileFacts, model_key: str | None = None
) -> tuple[float, str]:
    flops = train_flops_per_token(shape, s)
    measured = measured_mfu(profile.name, model_key, s.method)
    if measured:
        mfu, gpu = measured
        source = f"{mfu:.0%} MFU measured by bench/profiles on {gpu}, applied to {profile.peak_bf16_tflops} TFLOP/s"
    else:
        mfu = ASSUMED_MFU[s.method]
        source = f"estimated: {mfu:.0%} MFU of {profile.peak_bf16_tflops} TFLOP/s (not yet measured)"
    seconds_per_token = flops / (profile.peak_bf16_tflops * 1e12 * mfu) + offload_seconds_per_token(shape, s)
    if s.checkpoints_offloaded:
        source += f", plus the host copies of offloaded checkpoints at {HOST_COPY_BYTES_PER_S / 1e9:g} GB/s"
    return s.gpus / seconds_per_token, source


def measured_mfu(profile_name: str, model_key: str | None, method: str) -> tuple[float, str] | None:
    """MFU that bench/profiles measured for this profile's budget and model, and on which GPU.

    The benchmark caps a big GPU's memory to the profile's budget, so its tokens/s are that
    GPU's, not the card's; its MFU, times the card's own peak, is the better transfer."""
    for path in sorted(BENCH_RESULTS_DIR.glob("profiles-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for cell in data.get("cells", []):
            if (
                cell.get("kind") == "ftw"
                and cell.get("profile") == profile_name
                and cell.get("model") == model_key
                and cell.get("mfu")
                and cell.get("method", method) == method
            ):
                return float(cell["mfu"]), str(data.get("gpu", path.stem))
    return None


def gguf_sizes_gb(shape: ModelShape) -> tuple[float, float]:
    return shape.params * 2 / GIB, shape.params * QUANT_BITS[DEFAULT_QUANT] / 8 / GIB


# --- from and to LLaMA-Factory arguments ---------------------------------------------


def settings_from_args(args: dict, method: str, gpus: int) -> Settings:
    """The recipe's intent in planner terms; its batch x accumulation is the effective batch to keep."""
    return Settings(
        method=method,
        micro_batch=int(args.get("per_device_train_batch_size", 1)),
        grad_accum=int(args.get("gradient_accumulation_steps", 1)),
        cutoff=int(args.get("cutoff_len", 2048)),
        checkpointing=not args.get("disable_gradient_checkpointing", False),
        optimizer_8bit="8bit" in str(args.get("optim", "")),
        liger=bool(args.get("enable_liger_kernel", False)),
        lora_rank=int(args.get("lora_rank", 8)),
        gpus=gpus,
        offload_checkpoints=bool(args.get("use_unsloth_gc", False)),
    )


def profile_facts(profile: Profile) -> GpuProfileFacts:
    return GpuProfileFacts(profile.base_name, profile.memory_gb, profile.gpu.peak_bf16_tflops, profile.gpus)


def plan_for_profile(shape: ModelShape, args: dict, method: str, profile: Profile, pinned: set[str]) -> Choice:
    """Settings that fit the profile's card(s); several GPUs try ZeRO-2, then ZeRO-3, then ZeRO-3 with offload."""
    base = settings_from_args(args, method, profile.gpus)
    facts = profile_facts(profile)
    micro = base.micro_batch if "per_device_train_batch_size" in pinned else None
    checkpointing = base.checkpointing if "disable_gradient_checkpointing" in pinned else None
    upgrade = "quantization_bit" not in pinned
    # use_unsloth_gc set by the recipe or the profile is their choice; unset, the planner decides.
    offload_checkpoints = base.offload_checkpoints if "use_unsloth_gc" in args else None
    stages = [(0, False)] if profile.gpus == 1 else [(2, False), (2, True), (3, False), (3, True)]
    choice: Choice | None = None
    for zero_stage, offload in stages:
        if zero_stage == 3 and method == "qlora":
            break  # bitsandbytes 4-bit weights can't be partitioned by ZeRO-3 here
        staged = replace(base, zero_stage=zero_stage, offload=offload)
        choice = choose(shape, staged, facts, upgrade, micro, checkpointing, offload_checkpoints)
        if choice.fits:
            break
    assert choice is not None  # the first stage is never skipped
    return choice


def args_for(choice: Choice, base_method: str) -> dict:
    s = choice.settings
    args: dict[str, Any] = {"per_device_train_batch_size": s.micro_batch, "gradient_accumulation_steps": s.grad_accum}
    if not s.checkpointing:
        args["disable_gradient_checkpointing"] = True
    if s.method == "qlora" and base_method != "qlora":
        args.update(quantization_bit=4, quantization_method="bnb")
    if s.checkpoints_offloaded:
        args["use_unsloth_gc"] = True
    return args


def summary(choice: Choice, profile: Profile) -> dict:
    s, m = choice.settings, choice.memory
    return {
        "fits": choice.fits,
        "peak_vram_gb": round(m.total, 2),
        "budget_gb": round(profile.memory_gb * FIT_FRACTION, 2),
        "memory_gb": {key: round(value, 3) for key, value in asdict(m).items()},
        "host_ram_gb": round(choice.host_ram_gb, 2),
        "settings": asdict(s),
        "notes": choice.notes,
    }


def deepspeed_config_name(settings: Settings) -> str | None:
    """LLaMA-Factory's example DeepSpeed config for the chosen ZeRO stage (templates/deepspeed/)."""
    if settings.zero_stage == 0:
        return None
    return f"ds_z{settings.zero_stage}{'_offload' if settings.offload else ''}_config.json"


def attention_for(compute_capability: float) -> str:
    """FlashAttention-2 runs on Ampere, Ada and Hopper (sm_80-sm_90) when installed; SDPA elsewhere."""
    if 8.0 <= compute_capability < 10.0 and importlib.util.find_spec("flash_attn") is not None:
        return "fa2"
    return "sdpa"
