"""Quantization loss measured llama.cpp's way (wrapper/eval/quant_loss.py): llama-perplexity's KL
divergence of the demo run's Q4_K_M from its f16 GGUF, the f16 against itself (≈ 0), the reuse of an
unchanged measurement, eval.json's `quant_loss` section, and `ftw eval` completing without the tools.

The demo run is conftest's demo_run, read through a linked copy (its weights and GGUFs are symlinks)
so that nothing here writes into it; a small text cap keeps each llama-perplexity pass to seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrapper.core import llama_tools
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import QUANT_TYPES
from wrapper.core.paths import LLAMA_CPP_DIR
from wrapper.eval import perplexity_output, quant_loss, scoreboard

from tests.support.runner import linked_copy

# A real `llama-perplexity --kl-divergence` output: the demo's Q4_K_M against its f16 GGUF on 649
# tokens of its rows in the training format, context 256 (llama.cpp 0c1e570, the vendored tree), from its
# `computing over` line on (long lines split, nothing changed).
REAL_OUTPUT = (
    "0.00.207.570 I kl_divergence: computing over 3 chunks, n_ctx=256, batch_size=2048, n_seq=8"
    "\n"
    "0.02.231.821 I kl_divergence: 2.02 seconds per pass - ETA 0.00 minutes\n"
    "\n"
    "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence           "
    "   Δp RMS            Same top p\n"
    "   1       3.1167 ±    0.7899       0.04442 ±    0.04838       0.07609 ±    0.02208    13."
    "166 ±  2.109 %    96.850 ±  1.556 %\n"
    "   2       2.8305 ±    0.4349       0.03950 ±    0.03410       0.08243 ±    0.01472    13."
    "532 ±  1.623 %    95.669 ±  1.280 %\n"
    "   3       2.4059 ±    0.2686       0.05911 ±    0.02761       0.08289 ±    0.01384    13."
    "969 ±  1.519 %    96.325 ±  0.965 %\n"
    "\n"
    "====== Perplexity statistics ======\n"
    "Mean PPL(Q)                   :   2.405925 ±   0.268551\n"
    "Mean PPL(base)                :   2.267821 ±   0.266312\n"
    "Cor(ln(PPL(Q)), ln(PPL(base))):  97.22%\n"
    "Mean ln(PPL(Q)/PPL(base))     :   0.059115 ±   0.027608\n"
    "Mean PPL(Q)/PPL(base)         :   1.060897 ±   0.029289\n"
    "Mean PPL(Q)-PPL(base)         :   0.138103 ±   0.063084\n"
    "\n"
    "====== KL divergence statistics ======\n"
    "Mean    KLD:   0.082893 ±   0.013840\n"
    "Maximum KLD:   2.870626\n"
    "99.9%   KLD:   2.589624\n"
    "99.0%   KLD:   1.572158\n"
    "95.0%   KLD:   0.372100\n"
    "90.0%   KLD:   0.187595\n"
    "Median  KLD:   0.003177\n"
    "10.0%   KLD:   0.000024\n"
    " 5.0%   KLD:   0.000009\n"
    " 1.0%   KLD:   0.000000\n"
    " 0.1%   KLD:  -0.000002\n"
    "Minimum KLD:  -0.000004\n"
    "\n"
    "====== Token probability statistics ======\n"
    "Mean    Δp: -4.096 ± 0.685 %\n"
    "Maximum Δp: 31.738%\n"
    "99.9%   Δp: 28.635%\n"
    "99.0%   Δp: 13.881%\n"
    "95.0%   Δp:  4.107%\n"
    "90.0%   Δp:  1.039%\n"
    "75.0%   Δp:  0.001%\n"
    "Median  Δp: -0.046%\n"
    "25.0%   Δp: -1.801%\n"
    "10.0%   Δp: -16.002%\n"
    " 5.0%   Δp: -29.709%\n"
    " 1.0%   Δp: -60.834%\n"
    " 0.1%   Δp: -89.898%\n"
    "Minimum Δp: -92.394%\n"
    "RMS Δp    : 13.969 ± 1.519 %\n"
    "Same top p: 96.325 ± 0.965 %\n"
)

SMALL_TEXT = 700  # tokens: context 256, 2 chunks or more, a few seconds a pass


def test_parses_a_real_kl_divergence_output():
    stats = perplexity_output.parse_kld_output(REAL_OUTPUT)
    assert (stats.chunks, stats.ctx) == (3, 256)
    assert stats.positions == 3 * 127
    assert (stats.mean_kld, stats.mean_kld_uncertainty) == (0.082893, 0.013840)
    assert (stats.p99_kld, stats.max_kld, stats.median_kld) == (1.572158, 2.870626, 0.003177)
    assert (stats.same_top_pct, stats.same_top_uncertainty_pct) == (96.325, 0.965)
    assert (stats.ppl_q, stats.ppl_base, stats.ppl_ratio) == (2.405925, 2.267821, 1.060897)
    assert (stats.mean_delta_p_pct, stats.rms_delta_p_pct) == (-4.096, 13.969)


def test_an_output_without_final_statistics_is_an_error_not_zeros():
    cut = REAL_OUTPUT.split("====== Perplexity statistics ======")[0]  # what it prints under 100 positions
    with pytest.raises(FtwError, match="no final KL-divergence statistics"):
        perplexity_output.parse_kld_output(cut)


def test_context_halves_for_short_text_and_the_log_prob_file_stays_modest():
    assert quant_loss.context_for(4096) == 512
    assert quant_loss.context_for(700) == 256
    assert quant_loss.context_for(300) == 128
    assert quant_loss.context_for(10) == quant_loss.MIN_CONTEXT
    for n_vocab in (49152, 128256, 151936):
        chunks = quant_loss.max_chunks(512, n_vocab)
        assert chunks >= 2 and chunks * quant_loss.log_prob_bytes(512, n_vocab) <= quant_loss.MAX_BASE_BYTES
    # two chunks of the smallest context are enough for llama-perplexity's final statistics
    assert 2 * (quant_loss.MIN_CONTEXT - 1 - quant_loss.MIN_CONTEXT // 2) >= perplexity_output.MIN_POSITIONS


def test_the_published_figures_are_the_readmes():
    readme = (LLAMA_CPP_DIR / "tools" / "perplexity" / "README.md").read_text(encoding="utf-8")
    board = scoreboard.published()
    for quant, figures in board.quants.items():
        assert quant in QUANT_TYPES
        for name, value in figures.items():
            digits = 3 if name == "same_top_pct" else 6
            assert f"{value:.{digits}f} ±" in readme, (quant, name, value)
    assert f"{board.floor_kld:.6f} ±" in readme
    assert "f364eb6f" in readme and "f364eb6f" in board.source and board.url.endswith("tools/perplexity/README.md")
    assert board.compared("Q4_K_M", imatrix=True)["compare_kld"] == 0.028152 and board.compared("F16", False) is None


@pytest.fixture(scope="module")
def linked(demo_run, tmp_path_factory) -> Path:
    return linked_copy(demo_run, tmp_path_factory.mktemp("ql") / "runs")


@pytest.fixture(scope="module")
def measured(linked):
    """Q4_K_M and, as a second quant type, the f16 file itself (a Q8_0 entry linked to it) against the f16."""
    from wrapper.core import manifest

    data = manifest.load(linked)
    data["artifacts"]["gguf_q8_0"] = data["artifacts"]["gguf_f16"]  # the f16 against itself: KLD ≈ 0
    manifest.save(linked, data)
    plan = manifest.plan_of(linked)
    result = quant_loss.measure(linked, plan, seed=42, threads=lambda path: 1, max_tokens=SMALL_TEXT)
    return {"run": linked, "plan": plan, "result": result}


def test_kl_divergence_of_the_demo_q4_k_m(measured):
    result = measured["result"]
    assert result.status == "measured", result.reason
    q4 = result.quants["Q4_K_M"].stats
    assert 0 < q4.mean_kld < 1
    assert q4.p99_kld >= q4.mean_kld and q4.max_kld >= q4.p99_kld
    assert 50 < q4.same_top_pct < 100
    assert q4.ppl_ratio > 0.9
    assert result.ctx == 256 and q4.ctx == 256 and q4.chunks >= 2 and q4.positions >= perplexity_output.MIN_POSITIONS
    run = measured["run"]
    assert not (run / quant_loss.BASE_FILE).exists()  # the f16 log-probabilities are removed
    assert "Mean    KLD" in (run / quant_loss.LOG_FILE).read_text(encoding="utf-8")


def test_the_f16_against_itself_reads_almost_zero(measured):
    """Only the 16-bit storage of the f16 log-probabilities separates them (llama.cpp's floor, 0.000551 for
    Llama 3): far under the Q4_K_M's divergence, and the same top token everywhere."""
    same = measured["result"].quants["Q8_0"].stats
    q4 = measured["result"].quants["Q4_K_M"].stats
    assert abs(same.mean_kld) < 0.002 and same.mean_kld < q4.mean_kld / 10
    assert same.same_top_pct > 99.5
    assert abs(same.p99_kld) < 0.01
    assert abs(measured["result"].quants["Q8_0"].ppl_q_over_f16 - 1) < 0.001  # the f16 pass's own perplexity


def test_an_unchanged_measurement_is_reused_without_the_tools(measured, monkeypatch):
    run = measured["run"]
    log_before = (run / quant_loss.LOG_FILE).stat().st_size

    asked = []

    def no_tools(name):
        asked.append(name)
        raise llama_tools.ToolsUnavailable("not here")

    monkeypatch.setattr(llama_tools, "tool", no_tools)
    again = quant_loss.measure(run, measured["plan"], seed=42, threads=lambda path: 1, max_tokens=SMALL_TEXT)
    assert sorted(again.reused) == ["Q4_K_M", "Q8_0"]
    assert again.quants["Q4_K_M"] == measured["result"].quants["Q4_K_M"]
    assert (run / quant_loss.LOG_FILE).stat().st_size == log_before and asked == []
    # another text is another measurement: it needs the tools again
    other = quant_loss.measure(run, measured["plan"], seed=42, threads=lambda path: 1, max_tokens=SMALL_TEXT + 200)
    assert other.status == "skipped" and other.reused == [] and asked == ["llama-perplexity"]
    # told not to build them (make demo): nothing is built, and the fix names the build
    monkeypatch.setattr(llama_tools, "built_tool", lambda name: None)
    unbuilt = quant_loss.measure(
        run, measured["plan"], seed=42, threads=lambda path: 1, max_tokens=SMALL_TEXT + 200, build_tools=False
    )
    assert unbuilt.status == "skipped" and "not built yet" in unbuilt.reason and unbuilt.fix.startswith("ftw tools")
    assert asked == ["llama-perplexity"]


def test_eval_json_has_the_section_and_eval_completes_without_the_tools_or_the_f16(measured, monkeypatch):
    from wrapper.commands.eval_tables import print_report
    from wrapper.core import manifest
    from wrapper.eval.evaluate import evaluate
    from wrapper.eval.report import write_report
    from wrapper.eval.tables import report_of

    run = measured["run"]
    monkeypatch.setattr(quant_loss, "MAX_TOKENS", SMALL_TEXT)
    result = evaluate(run, val_sample=1, limit=1, max_new_tokens=2)  # the KLD is reused from above
    section = result.quant_loss
    assert section["status"] == "measured" and section["ctx"] == 256
    q4 = section["quants"]["Q4_K_M"]
    assert 0 < q4["mean_kld"] < 1 and q4["tokens"] >= 100 and q4["text_sha256"] == section["text"]["sha256"]
    assert q4["published"]["compare_kld"] == 0.031273 and q4["published"]["compare_same_top_pct"] == 91.901
    assert section["text"]["seen_in_training"] is True  # the demo has no validation split
    assert "source" in section["text"] and "parse" in " ".join(section["notes"])
    assert json.loads((run / "eval.json").read_text(encoding="utf-8"))["quant_loss"] == section
    md, html = write_report(run)
    assert "Quantization loss" in md.read_text(encoding="utf-8") and "0.0313" in md.read_text(encoding="utf-8")

    # the tools can't be built here: eval still completes, and the section says why and what to run
    (run / quant_loss.CACHE_FILE).unlink()

    def unavailable(name):
        raise llama_tools.ToolsUnavailable("llama.cpp's programs need cmake to build: install CMake. Then: ftw tools")

    monkeypatch.setattr(llama_tools, "tool", unavailable)
    result = evaluate(run, val_sample=1, limit=1, max_new_tokens=2)
    section = result.quant_loss
    assert section["status"] == "skipped" and "need cmake" in section["reason"] and section["fix"] == "ftw tools"
    assert section["quants"] == {} and result.aggregate["control"]["gguf:Q4_K_M"]["rows"] == 1
    md, _ = write_report(run)
    assert "KL divergence skipped" in md.read_text(encoding="utf-8")

    # the f16 GGUF is gone (deleted by hand): eval still completes, and the section names the command
    data = manifest.load(run)
    del data["artifacts"]["gguf_f16"], data["artifacts"]["gguf_q8_0"]
    manifest.save(run, data)
    result = evaluate(run, val_sample=1, limit=1, max_new_tokens=2)
    section = result.quant_loss
    assert section["status"] == "skipped" and "f16 GGUF is missing" in section["reason"]
    assert section["fix"] == f"ftw gguf --run {run.name} --keep-intermediates"
    assert result.quantization["perplexity"]["Q4_K_M"]["perplexity"] >= 1.0
    print_report(report_of(result))
    assert "f16 GGUF is missing" in write_report(run)[0].read_text(encoding="utf-8")
    # asked not to: nothing measured, nothing built
    result = evaluate(run, val_sample=1, limit=1, max_new_tokens=2, measure_quant_loss=False)
    assert result.quant_loss["status"] == "skipped" and "--no-quant-loss" in result.quant_loss["reason"]
