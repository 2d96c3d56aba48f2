"""llama.cpp's published KL-divergence scoreboard (Llama-3-8B), the scale `ftw eval`'s own numbers are
read beside: data in scoreboard.yaml next to this module, with its source."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

SCOREBOARD_FILE = Path(__file__).with_name("scoreboard.yaml")


@dataclass(frozen=True)
class Scoreboard:
    source: str  # where the figures are from, in words (the README's tables, model, text, revision)
    url: str
    floor_kld: float  # f16 against its own stored logits: the method's floor
    quants: dict[str, dict[str, float]]  # quant type -> mean_kld, mean_kld_imatrix, same_top_pct, ppl_ratio

    def compared(self, quant: str, imatrix: bool) -> dict | None:
        """The published figures of `quant`, with the ones comparable to a measurement with or without an
        importance matrix (`compare_kld`, `compare_same_top_pct`); None for a type the README doesn't list."""
        figures = self.quants.get(quant)
        if not figures:
            return None
        return {
            **figures,
            "compare_kld": figures.get("mean_kld_imatrix" if imatrix else "mean_kld"),
            "compare_same_top_pct": None if imatrix else figures.get("same_top_pct"),
        }


@functools.cache
def published() -> Scoreboard:
    data = yaml.safe_load(SCOREBOARD_FILE.read_text(encoding="utf-8"))
    return Scoreboard(data["source"], data["url"], float(data["floor_kld"]), data["quants"])
