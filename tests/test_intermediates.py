"""`ftw gguf` frees the disk of its intermediates once the quantized file is verified.

Works on a copy of the shared demo run (conftest's demo_run, made with --keep-intermediates),
so the other tests keep their merged model and f16 GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.runner import copy_run, run_ftw

RUN = "e2e"


@pytest.fixture(scope="module")
def copied_run(demo_run, tmp_path_factory) -> Path:
    """The demo run under another runs folder."""
    return copy_run(demo_run, tmp_path_factory.mktemp("intermediates") / "runs")


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text(encoding="utf-8"))


def test_gguf_removes_merged_weights_and_f16_after_verifying(copied_run):
    run, runs_dir = copied_run, copied_run.parent
    f16 = run / "gguf" / f"{RUN}-f16.gguf"
    q4 = run / "gguf" / f"{RUN}-Q4_K_M.gguf"
    merged_weights = sum(p.stat().st_size for p in (run / "merged").glob("*.safetensors"))
    assert f16.is_file() and merged_weights > 0

    result = run_ftw(runs_dir, "gguf", "--run", RUN)
    assert "Q4_K_M GGUF up to date" in result.stdout  # nothing converted or quantized again
    assert "removed the intermediates" in result.stdout
    assert not f16.exists()
    assert not list((run / "merged").glob("*.safetensors"))
    assert (run / "merged" / "tokenizer.json").is_file() and (run / "merged" / "config.json").is_file()
    assert "ftw export --run e2e --force" in (run / "merged" / "WEIGHTS_REMOVED.txt").read_text(encoding="utf-8")
    data = manifest_of(run)
    assert "gguf_f16" not in data["artifacts"]  # a key in the manifest means a file that exists
    assert data["removed_intermediates"]["merged"]["bytes"] == merged_weights
    assert Path(data["artifacts"]["gguf_q4_k_m"]) == q4 and q4.is_file()

    # The stages after it read only the quantized file and the merged folder's tokenizer.
    run_ftw(runs_dir, "modelfile", "--run", RUN)
    run_ftw(runs_dir, "smoke", "--run", RUN)
    # Re-running is a no-op, not an attempt to convert weights that are gone.
    again = run_ftw(runs_dir, "gguf", "--run", RUN)
    assert "Converting" not in again.stdout and "up to date" in again.stdout
    exported = run_ftw(runs_dir, "export", "--run", RUN)
    assert "merged model up to date" in exported.stdout and "weights were removed" in exported.stdout
    # ftw status tells removed intermediates from what is missing: nothing is left to make for them
    from wrapper.commands.status import run_status

    shown = {a.key: a.state for a in run_status(run).artifacts}
    assert shown["merged"] == shown["gguf_f16"] == "removed" and shown["gguf_q4_k_m"] == shown["modelfile"] == "made"


def test_a_new_quant_or_eval_without_intermediates_says_how_to_get_them(copied_run):
    run, runs_dir = copied_run, copied_run.parent
    if "removed_intermediates" not in manifest_of(run):
        run_ftw(runs_dir, "gguf", "--run", RUN)
    new_quant = run_ftw(runs_dir, "gguf", "--run", RUN, "--quant", "Q8_0", check=False)
    assert new_quant.returncode == 2
    assert "ftw export --run e2e --force" in new_quant.stdout + new_quant.stderr
    assert not (run / "gguf" / f"{RUN}-Q8_0.gguf").exists()


def test_eval_after_a_plain_gguf_scores_what_is_left_and_names_the_rest(copied_run):
    """The default path removes the merged weights and the f16 GGUF: eval still scores the base and the
    quantized GGUF, and says what it left out with the command that brings it back."""
    run, runs_dir = copied_run, copied_run.parent
    if "removed_intermediates" not in manifest_of(run):
        run_ftw(runs_dir, "gguf", "--run", RUN)
    evaluated = run_ftw(runs_dir, "eval", "--run", RUN, "--limit", "1", "--val-sample", "1")
    output = " ".join((evaluated.stdout + evaluated.stderr).split())
    fix = f"ftw export --run {RUN} --force && ftw gguf --run {RUN} --keep-intermediates"
    assert "left out" in output.lower() and fix in output
    result = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    assert set(result["models"]) == {"base", "gguf:Q4_K_M"} and result["gguf_quants"] == ["Q4_K_M"]
    assert set(result["skipped"]) == {"merged", "f16"} and result["skipped"]["merged"]["fix"] == fix
    assert result["aggregate"]["control"]["gguf:Q4_K_M"]["rows"] == 1 and "merged" not in result["aggregate"]["control"]
    assert result["quantization"]["perplexity"]["Q4_K_M"]["perplexity"] >= 1.0
    assert result["quant_loss"]["status"] == "skipped" and "f16 GGUF is missing" in result["quant_loss"]["reason"]
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "Left out: merged" in report and "merged HF" not in report


def test_a_bf16_gguf_asks_for_weights_in_the_base_dtype_first(demo_run, tmp_path):
    """ftw export stores the weights as float16 for the f16 GGUF; a bf16 GGUF made from them
    would lose what bf16 holds and f16 doesn't, so it is refused with the command to run."""
    from wrapper.core.safetensors_io import read_header

    run = copy_run(demo_run, tmp_path / "runs")
    runs_dir = run.parent

    def weight_dtypes() -> set[str]:
        return {
            info.dtype
            for path in (run / "merged").glob("*.safetensors")
            for info in read_header(path).values()
            if len(info.shape) == 2
        }

    assert weight_dtypes() == {"F16"}
    refused = run_ftw(runs_dir, "gguf", "--run", RUN, "--outtype", "bf16", "--keep-intermediates", check=False)
    assert refused.returncode == 2
    assert f"ftw export --run {RUN} --weights-dtype base" in refused.stdout + refused.stderr
    assert not (run / "gguf" / f"{RUN}-bf16.gguf").exists()

    exported = run_ftw(runs_dir, "export", "--run", RUN, "--weights-dtype", "base")
    assert "changed since the last time: weights dtype" in exported.stdout
    assert weight_dtypes() == {"BF16"}
    run_ftw(runs_dir, "gguf", "--run", RUN, "--outtype", "bf16", "--keep-intermediates")
    assert (run / "gguf" / f"{RUN}-bf16.gguf").is_file()
