"""The importance matrix: which weights matter most on the run's own training rows, so that the
quantizer spends its bits there (llama.cpp's llama-imatrix, then llama-quantize --imatrix).

A fine-tune's best calibration text is its training data in its training format: a seeded sample
of the run's training rows, laid out by LLaMA-Factory's template (wrapper/data/samples.py), capped
by tokens. The text's sha256, its rows and the seed are the stage's recorded inputs (in the
manifest), so the same data gives the same matrix and a change of data makes it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wrapper.core import artifacts, stage
from wrapper.core.cpu import cpu_jobs
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_exact
from wrapper.core.gguf_io import field_value
from wrapper.core.llama_tools import tool
from wrapper.core.plan import RunPlan
from wrapper.core.platform import ToolFolder
from wrapper.core.procs import run_with_status
from wrapper.data.samples import SampleText, sample_text
from wrapper.prompts.training_format import TrainingFormat

# llama.cpp's usual calibration is on the order of a hundred 512-token chunks; 64 of them keep an
# 8B model's pass on a CPU within minutes and cost a GPU seconds. --imatrix-tokens changes it.
DEFAULT_TOKENS = 64 * 512
CONTEXT = 512
MIN_CONTEXT = 64  # shorter chunks say little about attention; fewer rows than 2 of them is refused
SEED = 0


@dataclass(frozen=True)
class Calibration:
    sample: SampleText
    context: int

    @property
    def chunks(self) -> int:
        return self.sample.tokens // self.context


def context_for(tokens: int) -> int:
    """llama-imatrix needs two chunks at least: shorter chunks for a small dataset, never under MIN_CONTEXT."""
    context = CONTEXT
    while context > MIN_CONTEXT and tokens < 2 * context:
        context //= 2
    return context


def calibration(run_dir: Path, plan: RunPlan, fmt: TrainingFormat, max_tokens: int) -> Calibration:
    sample = sample_text(run_dir, plan, fmt, "train", max_tokens, SEED, min_tokens=2 * MIN_CONTEXT)
    return Calibration(sample, context_for(sample.tokens))


class ImatrixStage:
    """gguf/RUN-imatrix.gguf, computed with the unquantized GGUF on the calibration text."""

    force_says = "computes it again"

    def __init__(
        self, run_dir: Path, plan: RunPlan, source: Path, source_digest: str, calib: Calibration, log_path: Path
    ):
        self.run_dir, self.key = run_dir, artifacts.IMATRIX
        self.target = run_dir / "gguf" / f"{plan.run}-imatrix.gguf"
        self.source, self.source_digest, self.calib, self.log_path = source, source_digest, calib, log_path
        self.title = "importance matrix"
        self.logs: dict[str, Path] = {}

    def inputs(self) -> stage.StageInputs:
        sample = self.calib.sample
        return stage.StageInputs(
            self.key,
            {
                "unquantized GGUF": self.source_digest,
                "calibration sha256": sample.sha256,
                "calibration": f"{sample.rows} of {sample.of} rows, {sample.tokens} tokens, seed {sample.seed}",
                "context": str(self.calib.context),
            },
        )

    def make(self, partial: Path) -> None:
        text_file = partial.with_name(partial.name + ".txt")  # a helper of the partial: removed with it
        write_text_exact(text_file, self.calib.sample.text)
        at = ToolFolder(partial.parent)
        argv = [str(tool("llama-imatrix")), "-m", at.arg(self.source), "-f", at.arg(text_file), "-o", at.arg(partial)]
        argv += ["--output-format", "gguf", "-c", str(self.calib.context), "--parse-special"]
        argv += ["-t", str(cpu_jobs()), "--no-ppl"]
        what = f"importance matrix ({self.calib.chunks} chunks)"
        run_with_status(argv, self.log_path, "llama-imatrix", what, writes_to=partial.parent, cwd=at.cwd)

    def verify(self, partial: Path) -> str:
        entries, chunks = read_imatrix(partial)
        return f"{entries} tensors, {chunks} chunks of {self.calib.context} tokens"


def read_imatrix(path: Path) -> tuple[int, int]:
    """(tensors with importance data, chunks it was computed on), or a message about the file."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise FtwError(f"{path} is not a readable imatrix GGUF: {error}") from error
    chunks = field_value(reader, "imatrix.chunk_count") or 0
    entries = sum(1 for tensor in reader.tensors if tensor.name.endswith(".in_sum2"))
    if not entries or not chunks:
        raise FtwError(f"{path} holds no importance data ({entries} tensors, {chunks} chunks)")
    return entries, chunks
