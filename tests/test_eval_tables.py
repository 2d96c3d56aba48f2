"""The evaluation's tables (wrapper/eval/tables.py), built once from an EvalResult and rendered three ways:
report.md, report.html (templates/eval/) and the terminal. No model runs: the result is written by hand."""

from __future__ import annotations

from html.parser import HTMLParser

from wrapper.commands.eval_tables import print_report
from wrapper.core.eval_result import EvalResult
from wrapper.core.ui import console
from wrapper.eval import render
from wrapper.eval.tables import QUANT_LOSS_TITLE, comparison_table, report_of


def block(contains: float, rouge: float) -> dict:
    return {"rows": 2, "contains": contains, "token_f1": 0.5, "rouge_l": rouge, "exact_match": 0.0}


def kld(mean: float) -> dict:
    return {
        "size_bytes": 100 * 2**20,
        "imatrix": False,
        "mean_kld": mean,
        "mean_kld_uncertainty": 0.001,
        "p99_kld": 0.9,
        "same_top_pct": 95.0,
        "ppl_q_over_f16": 1.02,
        "ppl_ratio": 1.03,
        "tokens": 2040,
        "published": {"compare_kld": 0.031273, "compare_same_top_pct": 91.901},
    }


def answer(model: str, text: str) -> dict:
    return {
        "set": "control",
        "id": "c1",
        "model": model,
        "prompt": "Who <b>rules</b>?",
        "reference": "Ann",
        "answer": text,
        "metrics": {"rouge_l": 0.25},
    }


def a_result() -> EvalResult:
    """One quantized GGUF, the merged weights removed, the KL divergence measured."""
    forgotten = {
        "id": "g1",
        "prompt": "Capital of France?",
        "expect": "Paris",
        "base_answer": "Paris.",
        "answer": "Lyon.",
    }
    return EvalResult.from_dict(
        {
            "run": "tiny",
            "recipe": "demo",
            "profile": "cpu",
            "evaluated_at": "2026-12-03T06:00:00+00:00",
            "settings": {"max_new_tokens": 40, "format": "chatml"},
            "models": {"base": "/m/base", "gguf": "/runs/tiny/gguf/tiny-Q4_K_M.gguf"},
            "skipped": {"merged": {"reason": "the merged weights were removed", "fix": "ftw export --run tiny"}},
            "sets": {"val": {"rows": 2, "of": 9, "file": "val.jsonl", "note": "held out"}},
            "aggregate": {"control": {"base": block(0.0, 0.1), "gguf": block(1.0, 0.75)}},
            "forgetting": {"rows": 3, "known_by_base": 2, "gguf": {"forgotten": 1, "forgotten_prompts": [forgotten]}},
            "quantization": {
                "perplexity": {"f16": {"perplexity": 2.0, "tokens": 50}, "Q4_K_M": {"perplexity": 2.2, "tokens": 50}},
                "perplexity_set": "val",
                "perplexity_ratio": 1.1,
                "identical_greedy": None,
            },
            "quant_loss": {
                "status": "measured",
                "quants": {"Q4_K_M": kld(0.0612)},
                "text": {"rows": 4, "tokens": 2048, "sha256": "ab" * 32, "source": "val.jsonl"},
                "ctx": 512,
                "base": {"file": "/runs/tiny/gguf/tiny-f16.gguf"},
                "log": "/runs/tiny/logs/quant_loss.log",
                "published": {"source": "llama.cpp's README", "floor_kld": 0.000551},
                "notes": ["chat markers are read as text"],
            },
            "rows": [answer("base", "Bob"), answer("gguf", "Ann <3")],
        }
    )


def test_the_tables_are_built_once_and_read_the_same_in_markdown_html_and_the_terminal():
    report = report_of(a_result())
    metrics, quant_loss = report.tables[0], next(t for t in report.tables if t.title == QUANT_LOSS_TITLE)
    assert metrics.header == ["set", "metric", "base", "Q4_K_M GGUF"]
    assert metrics.rows[0] == ["control (2)", "contains", "0.000", "1.000"]
    assert metrics.warnings[0].startswith("Left out: merged: the merged weights were removed")
    assert quant_loss.rows[0][:4] == ["Q4_K_M", "no", "100 MiB", "0.0612 ± 0.0010"]
    assert "imatrix" not in quant_loss.brief and quant_loss.details == ["chat markers are read as text"]

    md = render.markdown(report, ["loss"], "report")
    assert "| control (2) | contains | 0.000 | 1.000 |" in md and "![loss](report/loss.png)" in md
    assert f"## {QUANT_LOSS_TITLE}" in md and "| Q4_K_M | no | 100 MiB | 0.0612 ± 0.0010 |" in md
    assert "- Left out: merged" in md and "## Forgotten by the fine-tune (Q4_K_M GGUF)" in md

    page = render.html(report, {"loss": b"\x89PNG"})
    cells = _Cells()
    cells.feed(page)
    assert ["control (2)", "contains", "0.000", "1.000"] in cells.rows
    assert ["control", "Who <b>rules</b>?", "Ann", "Bob", "Ann <3", "0.250"] in cells.rows  # escaped, read back
    assert "<b>rules" not in page and 'src="data:image/png;base64,iVBORw=="' in page

    with console.capture() as captured:
        print_report(report)
    terminal = captured.get()
    assert "Q4_K_M GGUF" in terminal and "0.0612 ±" in terminal and "Left out: merged" in terminal
    assert "scored tokens" not in terminal and "chat markers" not in terminal  # the files have those
    assert "Who <b>rules</b>?" not in terminal  # the answers stay in the files


class _Cells(HTMLParser):
    """The rows of every <table> of a page, as text."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def two_quants() -> EvalResult:
    """The same run scored on its Q4_K_M and its Q8_0: a column each, and the Q8_0 forgot nothing."""
    data = a_result().to_dict()
    q4, q8 = "gguf:Q4_K_M", "gguf:Q8_0"
    data["gguf_quants"] = ["Q4_K_M", "Q8_0"]
    data["models"][q8] = "/runs/tiny/gguf/tiny-Q8_0.gguf"
    data["aggregate"]["control"][q8] = block(0.5, 0.625)
    data["forgetting"][q8] = {"forgotten": 0, "forgotten_prompts": []}
    data["quantization"]["perplexity"]["Q8_0"] = {"perplexity": 2.05, "tokens": 50}
    data["quantization"]["perplexity_ratio"] = {"Q4_K_M": 1.1, "Q8_0": 1.025}
    data["quant_loss"]["quants"]["Q8_0"] = kld(0.0035)
    data["rows"] += [answer(q8, "Ann"), {**answer(q8, "Paris."), "set": "general", "id": "g1"}]
    assert data["rows"][1]["model"] == q4  # read in today's form: the one GGUF of before is gguf:Q4_K_M
    return EvalResult.from_dict(data)


def test_every_quant_scored_gets_its_column_in_every_rendering():
    result = two_quants()
    report = report_of(result)
    metrics, forgotten = report.tables[0], report.tables[-1]
    assert metrics.header == ["set", "metric", "base", "Q4_K_M GGUF", "Q8_0 GGUF"]
    assert metrics.rows[0] == ["control (2)", "contains", "0.000", "1.000", "0.500"]
    assert "the Q4_K_M GGUF forgot 1, the Q8_0 GGUF forgot 0" in " ".join(metrics.notes)
    assert "Q4_K_M 2.200 (ratio 1.100), Q8_0 2.050 (ratio 1.025)" in " ".join(metrics.notes)
    assert forgotten.header[-2:] == ["Q4_K_M GGUF", "Q8_0 GGUF"]
    assert forgotten.rows == [["Capital of France?", "Paris", "Paris.", "Lyon.", "Paris."]]
    assert report.answers.header[-2:] == ["ROUGE-L (Q4_K_M)", "ROUGE-L (Q8_0)"]

    md = render.markdown(report, [], "report")
    assert "| set | metric | base | Q4_K_M GGUF | Q8_0 GGUF |" in md
    assert "|  | rouge_l | 0.100 | 0.750 | 0.625 |" in md and "| Q8_0 | no | 100 MiB | 0.0035" in md
    cells = _Cells()
    cells.feed(render.html(report, {}))
    assert ["set", "metric", "base", "Q4_K_M GGUF", "Q8_0 GGUF"] in cells.rows
    assert ["", "rouge_l", "0.100", "0.750", "0.625"] in cells.rows
    with console.capture() as captured:
        print_report(report)
    assert "Q8_0 GGUF" in captured.get() and "0.625" in captured.get()

    # a comparison of runs reads each run's default quantization
    compared = comparison_table([result, a_result()], [[], []], ["both", "one"])
    assert ["quantized GGUF", "Q4_K_M", "Q4_K_M"] in compared.rows
    assert ["control rouge_l (quantized GGUF)", "0.750", "0.750"] in compared.rows
