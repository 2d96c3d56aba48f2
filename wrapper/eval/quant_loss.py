"""Quantization loss measured llama.cpp's way: the KL divergence of each quantized GGUF's next-token
distributions from the unquantized (f16) GGUF's, on the run's validation rows in the training format.

    llama-perplexity -m RUN-f16.gguf    -f text --kl-divergence-base base.kld -c CTX --chunks N
    llama-perplexity -m RUN-Q4_K_M.gguf --kl-divergence-base base.kld --kl-divergence -c CTX --chunks N

The first pass saves the f16 model's log-probabilities of every scored position (16 bits each,
the whole vocabulary: chunks x (CTX/2) x n_vocab x 2 bytes); the second compares the quantized
model's with them and prints mean and percentile KLD, the share of positions whose most likely
token is the same ("Same top p") and the perplexity ratio. Those lines are parsed
(wrapper/eval/perplexity_output.py); the whole output is in runs/RUN/logs/quant_loss.log. The same measurement
as the scoreboard in llama.cpp's tools/perplexity/README.md, so the numbers read beside it
(wrapper/eval/scoreboard.yaml), on a different model and text.

The text: `wrapper/data/samples.py` (validation rows, else the training rows, flagged), capped at
MAX_TOKENS, which keeps the f16 log-probability file under ~MAX_BASE_BYTES; the file lives in
runs/RUN/eval/ only while the quantized files are compared, then is removed. A measurement is
keyed on both GGUFs (digest, or size and mtime for big files), the text's sha256, the context and
llama.cpp's commit (runs/RUN/eval/quant_loss.jsonl, a journal): `ftw eval` again with nothing changed reuses it.

llama-perplexity is built on first use (`wrapper/core/llama_tools.tool`, a few minutes once per
llama.cpp commit; `ftw tools` does it ahead). Where it can't be built, or the f16 GGUF is gone,
the section says why and what to run, and the rest of `ftw eval` is unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wrapper.core import artifacts, llama_tools, manifest
from wrapper.core import stage as stages
from wrapper.core.cpu import cpu_jobs
from wrapper.core.disk import check_free_space
from wrapper.core.errors import FtwError, StageError
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.journal import Journal
from wrapper.core.paths import llama_cpp_commit
from wrapper.core.plan import RunPlan
from wrapper.core.platform import ToolFolder
from wrapper.core.procs import run_with_status
from wrapper.core.ui import step
from wrapper.data.samples import SampleText, sample_text
from wrapper.eval import scoreboard
from wrapper.eval.perplexity_output import KldStats, base_chunks, base_failure, base_ppl, parse_kld_output
from wrapper.prompts.training_format import training_format

TOOL = "llama-perplexity"
# The text: at most MAX_TOKENS tokens (the run's tokenizer), 8 chunks of 512 and 2,040 scored positions;
# and at most as many chunks as keep the f16 log-probabilities under MAX_BASE_BYTES: one chunk of 512 holds
# 255 positions x n_vocab x 2 bytes, 25 MB for SmolLM2's 49k vocabulary (8 chunks), 65 MB for Llama 3's
# 128k (4 chunks), 77 MB for Qwen's 152k (3 chunks).
MAX_TOKENS = 4096
MAX_BASE_BYTES = 256 * 2**20
CONTEXT = 512  # llama.cpp's default and the scoreboard's
# llama-perplexity prints its final statistics only from MIN_POSITIONS scored positions on
# (perplexity_output.py); each chunk scores its second half less one, so 2 chunks of 128 (126)
# is the least it can work with, and it needs two chunks' worth of text.
MIN_CONTEXT = 128
UNQUANTIZED = ("f16", "bf16")

CACHE_FILE = Path("eval") / "quant_loss.jsonl"  # a journal keyed by measurement_key
TEXT_FILE = Path("eval") / "quant_loss.txt"
BASE_FILE = Path("eval") / "quant_loss-base.kld"
LOG_FILE = Path("logs") / "quant_loss.log"

SPECIAL_TOKENS_NOTE = (
    "llama-perplexity tokenizes the text without parsing special tokens (perplexity.cpp calls common_tokenize "
    "without parse_special and has no --parse-special), so the chat markers of the training format are read as "
    "plain text, several ordinary tokens each; they are scored with the rest, identically for both models."
)
PPL_RATIO_NOTE = (
    "llama.cpp's ppl_ratio (Mean PPL(Q)/PPL(base)) divides by a PPL(base) computed from the f16 log-probabilities "
    "as stored (16 bits, clipped 16 nats below the top logit), so very unlikely tokens (a chat marker read as text) "
    "make it read high: the demo's f16 file against itself reads 1.007 on its rows. ppl_q_over_f16 divides by the "
    "f16 pass's own perplexity on the same positions instead; the report shows that one."
)


# ---------------------------------------------------------------------------------------
# the measurement


@dataclass(frozen=True)
class QuantLoss:
    """One quantized GGUF against the f16 GGUF."""

    quant: str
    file: str
    size_bytes: int
    imatrix: bool
    stats: KldStats
    key: str
    text_sha256: str
    seconds: float
    measured_at: str
    ppl_f16: float | None = None  # the f16 pass's own perplexity on the same positions

    @property
    def ppl_q_over_f16(self) -> float | None:
        return self.stats.ppl_q / self.ppl_f16 if self.ppl_f16 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "size_bytes": self.size_bytes,
            "imatrix": self.imatrix,
            **asdict(self.stats),
            "ppl_f16": self.ppl_f16,
            "ppl_q_over_f16": self.ppl_q_over_f16,
            "tokens": self.stats.positions,
            "text_sha256": self.text_sha256,
            "seconds": self.seconds,
            "measured_at": self.measured_at,
            "key": self.key,
            "published": scoreboard.published().compared(self.quant, self.imatrix),
        }

    @classmethod
    def from_dict(cls, quant: str, data: dict[str, Any]) -> QuantLoss:
        names = {f for f in KldStats.__dataclass_fields__}
        return cls(
            quant=quant,
            file=data["file"],
            size_bytes=data["size_bytes"],
            imatrix=data["imatrix"],
            stats=KldStats(**{k: v for k, v in data.items() if k in names}),
            key=data["key"],
            text_sha256=data["text_sha256"],
            seconds=data["seconds"],
            measured_at=data["measured_at"],
            ppl_f16=data.get("ppl_f16"),
        )


@dataclass
class QuantLossResult:
    """eval.json's `quant_loss` section."""

    status: str  # measured | partial (some quant types could not be) | skipped
    reason: str | None = None
    fix: str | None = None
    base: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    ctx: int | None = None
    max_chunks: int | None = None
    quants: dict[str, QuantLoss] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    log: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "fix": self.fix,
            "method": "llama-perplexity --kl-divergence-base (f16) then --kl-divergence (each quant type)",
            "base": self.base,
            "text": self.text,
            "ctx": self.ctx,
            "max_chunks": self.max_chunks,
            "quants": {name: q.to_dict() for name, q in self.quants.items()},
            "reused": self.reused,
            "log": self.log,
            "notes": [SPECIAL_TOKENS_NOTE, PPL_RATIO_NOTE],
            "published": asdict(scoreboard.published()),
        }


def skipped(reason: str, fix: str | None) -> QuantLossResult:
    return QuantLossResult("skipped", reason=reason, fix=fix)


def unquantized_gguf(run_dir: Path) -> tuple[str, Path] | None:
    recorded = manifest.load(run_dir).get("artifacts", {})
    for kind in UNQUANTIZED:
        value = recorded.get(artifacts.gguf(kind))
        if value and Path(value).is_file():
            return kind, Path(value)
    return None


def remake_command(run_dir: Path) -> str:
    run = run_dir.name
    if "merged" in manifest.removed_intermediates(run_dir):
        return f"ftw export --run {run} --force && ftw gguf --run {run} --keep-intermediates"
    return f"ftw gguf --run {run} --keep-intermediates"


def uses_imatrix(run_dir: Path, quant: str) -> bool:
    inputs = stages.recorded_inputs(run_dir, artifacts.gguf(quant)) or {}
    return "importance matrix" in inputs


def context_for(tokens: int) -> int:
    """CONTEXT, halved for a short text until it holds two chunks; never under MIN_CONTEXT."""
    context = CONTEXT
    while context > MIN_CONTEXT and tokens < 2 * context:
        context //= 2
    return context


def log_prob_bytes(ctx: int, n_vocab: int) -> int:
    """Bytes of one chunk in the f16 log-probability file (perplexity.cpp's process_logits)."""
    return (ctx - 1 - ctx // 2) * (2 * ((n_vocab + 1) // 2) + 4) * 2 + ctx * 4


def max_chunks(ctx: int, n_vocab: int) -> int:
    return max(2, MAX_BASE_BYTES // log_prob_bytes(ctx, n_vocab))


def measurement_key(base: Path, quant: Path, sample: SampleText, ctx: int, chunks: int) -> str:
    return stages.value_digest(
        {
            "base": stages.file_digest(base),
            "quant": stages.file_digest(quant),
            "text": sample.sha256,
            "ctx": ctx,
            "chunks": chunks,
            "llama.cpp": llama_cpp_commit(),
        }
    )


def run_perplexity(argv: list[str], log: Path, what: str, at: ToolFolder) -> str:
    """Run llama-perplexity in `at` with its output appended to `log`; return this run's part of the log."""
    start = log.stat().st_size if log.is_file() else 0
    run_with_status(argv, log, TOOL, what, writes_to=at.folder, cwd=at.cwd)
    with log.open("rb") as handle:
        handle.seek(start)
        return handle.read().decode("utf-8", errors="replace")


def compare(
    exe: Path, base: Path, quant: Path, base_file: Path, ctx: int, chunks: int, threads: int, log: Path
) -> KldStats:
    at = ToolFolder(base_file.parent)
    argv = [str(exe), "-m", at.arg(quant), "--kl-divergence-base", at.arg(base_file), "--kl-divergence"]
    argv += ["-c", str(ctx), "--chunks", str(chunks), "-t", str(threads), "-tb", str(threads)]
    output = run_perplexity(argv, log, f"KL divergence of {quant.name} from {base.name}", at)
    try:
        return parse_kld_output(output)
    except FtwError as error:
        raise FtwError(f"{error}; the output: {log}") from None


def save_base(
    exe: Path, base: Path, text_file: Path, base_file: Path, ctx: int, chunks: int, threads: int, log: Path
) -> float | None:
    """The f16 pass: its log-probabilities into `base_file`; returns its perplexity on the scored positions."""
    at = ToolFolder(base_file.parent)
    argv = [str(exe), "-m", at.arg(base), "-f", at.arg(text_file), "--kl-divergence-base", at.arg(base_file)]
    argv += ["-c", str(ctx), "--chunks", str(chunks), "-t", str(threads), "-tb", str(threads)]
    output = run_perplexity(argv, log, f"{base.name}'s log-probabilities", at)
    if not base_file.is_file() or base_chunks(output) is None:
        why = base_failure(output) or "it wrote no log-probability file"
        raise FtwError(f"llama-perplexity's f16 pass failed: {why}; the output: {log}")
    return base_ppl(output)


def default_threads(path: Path) -> int:
    return cpu_jobs()


def measure(
    run_dir: Path,
    plan: RunPlan,
    seed: int = 0,
    threads: Callable[[Path], int] = default_threads,
    max_tokens: int | None = None,
    build_tools: bool = True,
) -> QuantLossResult:
    """Every quantized GGUF of the run against its f16 GGUF; measurements whose key is unchanged are reused.
    Without `build_tools`, llama-perplexity is used only if it is built already."""
    found = unquantized_gguf(run_dir)
    if found is None:
        return skipped(
            "the run's f16 GGUF is missing (`ftw gguf` removes it after quantizing unless told to keep it): "
            "the KL divergence compares each quantized file with it",
            remake_command(run_dir),
        )
    base_kind, base = found
    quants = manifest.quantized_ggufs(run_dir)
    if not quants:
        return skipped("the run has no quantized GGUF", f"ftw gguf --run {run_dir.name} --keep-intermediates")
    try:
        merged = manifest.artifact(run_dir, artifacts.MERGED)
        fmt = training_format(merged, plan.template, plan.system)
        sample = sample_text(run_dir, plan, fmt, "val", max_tokens or MAX_TOKENS, seed, min_tokens=2 * MIN_CONTEXT)
    except FtwError as error:
        return skipped(str(error), "a larger validation split (the recipe's data.val_ratio, then ftw data prepare)")
    ctx = context_for(sample.tokens)
    n_vocab = len(fmt.tokenizer)
    chunks = max_chunks(ctx, n_vocab)
    keys = {quant: measurement_key(base, path, sample, ctx, chunks) for quant, path in quants.items()}
    result = QuantLossResult(
        "measured",
        base={"kind": base_kind, "file": str(base), "size_bytes": base.stat().st_size},
        text={**sample.describe(), "file": str(run_dir / TEXT_FILE)},
        ctx=ctx,
        max_chunks=chunks,
        log=str(run_dir / LOG_FILE),
    )
    with Journal(run_dir / CACHE_FILE, "key") as measured:
        todo = reuse_measured(result, measured, keys)
        if result.reused:
            step(f"  KL divergence: {', '.join(result.reused)} up to date (in {run_dir / CACHE_FILE})")
        exe = perplexity_tool(result, todo, run_dir.name, build_tools) if todo else None
        if exe is not None:
            passes = Passes(exe, base, ctx, chunks, n_vocab, threads)
            todo_files = {quant: quants[quant] for quant in todo}
            measure_quants(run_dir, result, passes, sample, todo_files, keys, measured)
    result.quants = {q: result.quants[q] for q in quants if q in result.quants}
    return result


def reuse_measured(result: QuantLossResult, measured: Journal, keys: dict[str, str]) -> list[str]:
    """Put the measurements made before from the same inputs into `result`; return the quant types still to
    measure."""
    todo = []
    for quant, key in keys.items():
        entry = measured.entries.get(key)
        try:
            if entry and entry.get("key") == key:
                result.quants[quant] = QuantLoss.from_dict(quant, entry)
                result.reused.append(quant)
                continue
        except (KeyError, TypeError):  # written by another version: measured again
            pass
        todo.append(quant)
    return todo


def not_measured(result: QuantLossResult, reason: str, fix: str) -> None:
    result.status = "partial" if result.quants else "skipped"
    result.reason = reason
    result.fix = fix


def perplexity_tool(result: QuantLossResult, todo: list[str], run: str, build_tools: bool) -> Path | None:
    """llama-perplexity, built now if need be and allowed; None with the reason in `result` where it can't be."""
    if not build_tools and llama_tools.built_tool(TOOL) is None:
        reason = (
            f"{', '.join(todo)} not measured: llama.cpp's tools are not built yet "
            f"(a few minutes once on a CPU; this eval was told not to build them)"
        )
        not_measured(result, reason, f"ftw tools (or ftw eval --run {run}, which builds them)")
        return None
    try:
        return llama_tools.tool(TOOL)
    except llama_tools.ToolsUnavailable as error:
        not_measured(result, f"{', '.join(todo)} not measured: {error}", "ftw tools")
        return None


@dataclass(frozen=True)
class Passes:
    """How llama-perplexity runs: the program, the f16 GGUF, the context, the chunks, the threads per file."""

    exe: Path
    base: Path
    ctx: int
    chunks: int
    n_vocab: int
    threads: Callable[[Path], int]


def measure_quants(
    run_dir: Path,
    result: QuantLossResult,
    passes: Passes,
    sample: SampleText,
    todo: dict[str, Path],
    keys: dict[str, str],
    measured: Journal,
) -> None:
    """The f16 pass, then each quantized GGUF of `todo` against it, into `result` and the journal as each ends;
    a failure leaves the rest unmeasured, with the reason in `result`."""
    text_file, base_file, log = run_dir / TEXT_FILE, run_dir / BASE_FILE, run_dir / LOG_FILE
    exe, base, ctx, chunks = passes.exe, passes.base, passes.ctx, passes.chunks
    step(
        f"KL divergence of {', '.join(todo)} from {base.name}: {sample.tokens} tokens of "
        f"{'training' if sample.seen_in_training else 'validation'} rows, context {ctx} (llama-perplexity; log: {log})"
    )
    try:
        text_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(text_file, sample.text)
        needs = {"f16 log-probabilities": log_prob_bytes(ctx, passes.n_vocab) * chunks}
        check_free_space(text_file.parent, needs, "the KL-divergence measurement")
        ppl_f16 = save_base(exe, base, text_file, base_file, ctx, chunks, passes.threads(base), log)
        for quant, path in todo.items():
            started = time.perf_counter()
            stats = compare(exe, base, path, base_file, ctx, chunks, passes.threads(path), log)
            loss = QuantLoss(
                quant=quant,
                file=str(path),
                size_bytes=path.stat().st_size,
                imatrix=uses_imatrix(run_dir, quant),
                stats=stats,
                key=keys[quant],
                text_sha256=sample.sha256,
                seconds=round(time.perf_counter() - started, 2),
                measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                ppl_f16=ppl_f16,
            )
            result.quants[quant] = loss
            measured.append(loss.to_dict())
    except (StageError, FtwError) as error:
        missing = [q for q in todo if q not in result.quants]
        not_measured(
            result, f"{', '.join(missing)} not measured: {error}", f"see {log}; then ftw eval --run {run_dir.name}"
        )
    finally:
        base_file.unlink(missing_ok=True)
