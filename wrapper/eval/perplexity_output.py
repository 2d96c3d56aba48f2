"""What llama-perplexity prints, read: the final statistics of a `--kl-divergence` pass (perplexity.cpp,
kl_divergence) and the f16 pass's chunk count, perplexity and failure lines. The measurement that runs it
is wrapper/eval/quant_loss.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

from wrapper.core.errors import FtwError

# llama-perplexity prints its final statistics only from 100 scored positions on (perplexity.cpp:
# `if (kld.count < 100) return;`).
MIN_POSITIONS = 100


@dataclass(frozen=True)
class KldStats:
    """The statistics `llama-perplexity --kl-divergence` prints at its end (perplexity.cpp, kl_divergence)."""

    chunks: int
    ctx: int
    ppl_q: float
    ppl_base: float
    ppl_ratio: float
    ppl_ratio_uncertainty: float
    mean_kld: float
    mean_kld_uncertainty: float
    max_kld: float
    p99_kld: float
    median_kld: float
    mean_delta_p_pct: float
    rms_delta_p_pct: float
    same_top_pct: float
    same_top_uncertainty_pct: float

    @property
    def positions(self) -> int:
        """Token positions scored: the second half of each chunk, less its last token."""
        return self.chunks * (self.ctx - 1 - self.ctx // 2)


_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"
_PATTERNS = {
    "chunks_ctx": rf"kl_divergence: computing over {_NUMBER} chunks, n_ctx={_NUMBER}",
    "ppl_q": rf"^Mean PPL\(Q\)\s*:\s*{_NUMBER}",
    "ppl_base": rf"^Mean PPL\(base\)\s*:\s*{_NUMBER}",
    "ppl_ratio": rf"^Mean PPL\(Q\)/PPL\(base\)\s*:\s*{_NUMBER}\s*±\s*{_NUMBER}",
    "mean_kld": rf"^Mean\s+KLD:\s*{_NUMBER}\s*±\s*{_NUMBER}",
    "max_kld": rf"^Maximum KLD:\s*{_NUMBER}",
    "p99_kld": rf"^99\.0%\s+KLD:\s*{_NUMBER}",
    "median_kld": rf"^Median\s+KLD:\s*{_NUMBER}",
    "mean_delta_p": rf"^Mean\s+Δp:\s*{_NUMBER}\s*±\s*{_NUMBER}\s*%",
    "rms_delta_p": rf"^RMS Δp\s*:\s*{_NUMBER}\s*±\s*{_NUMBER}\s*%",
    "same_top": rf"^Same top p:\s*{_NUMBER}\s*±\s*{_NUMBER}\s*%",
}


def parse_kld_output(text: str) -> KldStats:
    """The final statistics of one `llama-perplexity --kl-divergence` output; FtwError naming what is
    missing when they aren't there (too little text: it prints none under 100 positions)."""
    found: dict[str, tuple[float, ...]] = {}
    for name, pattern in _PATTERNS.items():
        matches = re.findall(pattern, text, flags=re.MULTILINE)
        if matches:
            last = matches[-1]
            found[name] = tuple(float(x) for x in (last if isinstance(last, tuple) else (last,)))
    missing = [name for name in _PATTERNS if name not in found]
    if missing:
        raise FtwError(
            "llama-perplexity's output has no " + ", ".join(missing) + " line: it printed no final KL-divergence "
            f"statistics (it prints none under {MIN_POSITIONS} scored positions, or it stopped on an error)"
        )
    return KldStats(
        chunks=int(found["chunks_ctx"][0]),
        ctx=int(found["chunks_ctx"][1]),
        ppl_q=found["ppl_q"][0],
        ppl_base=found["ppl_base"][0],
        ppl_ratio=found["ppl_ratio"][0],
        ppl_ratio_uncertainty=found["ppl_ratio"][1],
        mean_kld=found["mean_kld"][0],
        mean_kld_uncertainty=found["mean_kld"][1],
        max_kld=found["max_kld"][0],
        p99_kld=found["p99_kld"][0],
        median_kld=found["median_kld"][0],
        mean_delta_p_pct=found["mean_delta_p"][0],
        rms_delta_p_pct=found["rms_delta_p"][0],
        same_top_pct=found["same_top"][0],
        same_top_uncertainty_pct=found["same_top"][1],
    )


def base_chunks(text: str) -> int | None:
    """Chunks the f16 pass computed (`perplexity: calculating perplexity over N chunks`), if it says."""
    match = re.search(r"calculating perplexity over (\d+) chunks", text)
    return int(match.group(1)) if match else None


def base_ppl(text: str) -> float | None:
    """The f16 pass's own perplexity on the scored positions (`Final estimate: PPL = X +/- Y`)."""
    match = re.search(r"Final estimate: PPL = ([0-9.]+)", text)
    return float(match.group(1)) if match else None


def base_failure(text: str) -> str | None:
    """What llama-perplexity's f16 pass said when it wrote no log-probabilities (it exits 0 on too little text)."""
    lines = [line.split(" E ", 1)[-1].strip() for line in text.splitlines() if "you need at least" in line]
    lines += [line.split(" E ", 1)[-1].strip() for line in text.splitlines() if "tokenizes to only" in line]
    return "; ".join(lines) or None
