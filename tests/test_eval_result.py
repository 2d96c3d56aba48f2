"""eval.json, typed: the file `ftw eval` writes reads back as the same result; one from an earlier ftw loads."""

from __future__ import annotations

import json

import pytest

from wrapper.core.errors import FtwError
from wrapper.core.eval_result import EVAL_JSON, EvalResult

BEFORE_QUANT_OPTION = {  # eval.json as ftw wrote it before --quant, skipped columns and per-language tables
    "run": "old",
    "recipe": "demo",
    "profile": "cpu",
    "evaluated_at": "2026-11-02T10:00:00+00:00",
    "settings": {"max_new_tokens": 40, "format": "smollm2"},
    "models": {"base": "/m/base", "merged": "/runs/old/merged", "gguf": "/runs/old/gguf/old-Q4_K_M.gguf"},
    "sets": {"control": {"rows": 2}},
    "aggregate": {"control": {"base": {"rows": 2, "contains": 0.0}, "gguf": {"rows": 2, "contains": 1.0}}},
    "forgetting": {"known_by_base": 3},
    "quantization": {"perplexity": {}},
    "quant_loss": {"status": "measured", "quants": {"Q4_K_M": {"mean_kld": 0.07}}},
    "rows": [],
    "adapter": None,
}


def test_an_eval_json_from_an_earlier_ftw_loads_with_what_it_lacks_empty(tmp_path):
    (tmp_path / EVAL_JSON).write_text(json.dumps(BEFORE_QUANT_OPTION), encoding="utf-8")
    result = EvalResult.load(tmp_path)
    assert result.gguf_quants == ["Q4_K_M"] and result.skipped == {} and result.by_language == {}
    assert result.kinds == ["base", "merged", "gguf:Q4_K_M"] and result.titles["gguf:Q4_K_M"] == "Q4_K_M GGUF"
    assert result.metric("control", "gguf:Q4_K_M", "contains") == 1.0
    assert result.metric("val", "gguf:Q4_K_M", "contains") is None and result.forgetting == {"known_by_base": 3}
    assert result.kld("Q4_K_M", "mean_kld") == 0.07 and result.kld("Q8_0", "mean_kld") is None
    assert result.adapter is None


def test_what_is_saved_reads_back_the_same(tmp_path):
    result = EvalResult.from_dict({**BEFORE_QUANT_OPTION, "gguf_quant": "Q8_0", "adapter": {"adapter_bytes": 9}})
    assert result.gguf_quants == ["Q8_0"] and result.models["gguf:Q8_0"] == "/runs/old/gguf/old-Q4_K_M.gguf"
    assert result.main_quant == "Q8_0" and result.aggregate["control"]["gguf:Q8_0"]["contains"] == 1.0
    result.save(tmp_path)
    again = EvalResult.load(tmp_path)
    assert again == result and again.titles["gguf:Q8_0"] == "Q8_0 GGUF"
    written = json.loads((tmp_path / EVAL_JSON).read_text(encoding="utf-8"))
    assert list(written)[:7] == ["run", "recipe", "profile", "evaluated_at", "settings", "models", "gguf_quants"]


def test_several_quants_are_columns_in_order_and_the_default_one_stands_for_the_run():
    models = {"lora": "b + a", "gguf:Q8_0": "q8", "base": "b", "gguf:Q4_K_M": "q4"}
    result = EvalResult.from_dict({**BEFORE_QUANT_OPTION, "models": models, "gguf_quants": ["Q8_0", "Q4_K_M"]})
    assert result.kinds == ["base", "gguf:Q8_0", "gguf:Q4_K_M", "lora"] and result.main_quant == "Q4_K_M"


def test_a_run_without_eval_json_names_the_command(tmp_path):
    with pytest.raises(FtwError, match=f"Run `ftw eval --run {tmp_path.name}` first"):
        EvalResult.load(tmp_path)


@pytest.mark.parametrize("text", ['{"models": {}}', '{"run": "e2e", "models": {', "[]"])
def test_an_incomplete_or_cut_eval_json_names_the_file_and_the_command(tmp_path, text):
    run_dir = tmp_path / "e2e"
    run_dir.mkdir()
    (run_dir / EVAL_JSON).write_text(text, encoding="utf-8")
    with pytest.raises(FtwError) as raised:
        EvalResult.load(run_dir)
    assert str(run_dir / EVAL_JSON) in str(raised.value) and "ftw eval --run e2e" in str(raised.value)
