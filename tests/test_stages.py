"""Up-to-date stages: a stage is skipped when what it was made from is unchanged, made again
(saying what changed) when not, and --force redoes it regardless."""

from __future__ import annotations

import json
from pathlib import Path

from wrapper.core.stage import StageInputs, file_digest

from tests.support.runner import copy_run, run_ftw

RUN = "e2e"


def test_changes_are_listed_per_input():
    now = StageInputs("merged", {"adapter": "sha256 aa", "export.yaml template": '"qwen3"'})
    assert now.changes_from(None) is None  # an older run recorded nothing: trusted as made
    assert now.changes_from(dict(now.values)) == []
    assert now.changes_from({"adapter": "sha256 bb", "export.yaml flash_attn": '"fa2"'}) == [
        "adapter: sha256 bb -> sha256 aa",
        'export.yaml flash_attn: "fa2" -> (not set)',
        'export.yaml template: (not set) -> "qwen3"',
    ]


def test_big_files_are_known_by_size_and_time_small_ones_by_content(tmp_path, monkeypatch):
    small = tmp_path / "adapter_config.json"
    small.write_text("{}", encoding="utf-8")
    before = file_digest(small)
    small.write_text("{} ", encoding="utf-8")
    assert file_digest(small) != before and file_digest(small).startswith("sha256 ")
    monkeypatch.setattr("wrapper.core.stage.FULL_HASH_BYTES", 1)
    assert file_digest(small).startswith("size 3, mtime ")


def stage_digests(run: Path) -> dict[str, str]:
    data = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    return {key: value["digest"] for key, value in data["stages"].items()}


def test_a_changed_adapter_is_merged_converted_and_quantized_again(demo_run, tmp_path):
    run = copy_run(demo_run, tmp_path / "runs")
    runs_dir = run.parent
    before = stage_digests(run)
    assert set(before) >= {"adapter", "merged", "gguf_f16", "gguf_q4_k_m"}

    unchanged = (
        run_ftw(runs_dir, "export", "--run", RUN).stdout
        + run_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates").stdout
    )
    assert "merged model up to date" in unchanged and "Q4_K_M GGUF up to date" in unchanged
    assert "Converting" not in unchanged and stage_digests(run) == before

    # Another adapter in place of the trained one (here: its config, rewritten).
    config = run / "adapter" / "adapter_config.json"
    config.write_text(config.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    merged_again = run_ftw(runs_dir, "export", "--run", RUN).stdout
    assert "merged model: made again, changed since the last time: adapter: sha256" in merged_again
    converted = run_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates").stdout
    assert "Converting" in converted and "Q4_K_M GGUF (" in converted
    after = stage_digests(run)
    assert after["merged"] != before["merged"] and after["gguf_f16"] != before["gguf_f16"]
    assert after["gguf_q4_k_m"] != before["gguf_q4_k_m"] and after["adapter"] == before["adapter"]

    forced = run_ftw(runs_dir, "gguf", "--run", RUN, "--keep-intermediates", "--force").stdout
    assert "Converting" in forced and stage_digests(run) == after
