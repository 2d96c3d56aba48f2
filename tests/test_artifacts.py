"""The registry of a run's artifacts: what is made from what, and so what goes stale when one is made again."""

from __future__ import annotations

import json

import pytest

from wrapper.core import artifacts, manifest

Q4, Q8 = artifacts.gguf("Q4_K_M"), artifacts.gguf("Q8_0")
EVERY_KEY = [
    artifacts.ADAPTER,
    artifacts.MERGED,
    artifacts.gguf("f16"),
    artifacts.IMATRIX,
    Q4,
    Q8,
    artifacts.MODELFILE,
    artifacts.PUBLISH,
    artifacts.GGUF_LORA,
    artifacts.MODELFILE_ADAPTER,
    artifacts.base_gguf("Q4_K_M"),
    artifacts.GGUF_VOCAB,
    artifacts.GGUF_LORA_BASE,
    artifacts.TRAIN_LOG,
    artifacts.GGUF_LOG,
]


def stale_after(made_again: str) -> set[str]:
    return {key for key in EVERY_KEY if artifacts.depends_on(key, made_again)}


def test_a_new_merge_makes_the_files_made_from_it_stale_and_not_the_adapters_own():
    assert stale_after(artifacts.MERGED) == {
        artifacts.MERGED,
        artifacts.gguf("f16"),
        artifacts.IMATRIX,
        Q4,
        Q8,
        artifacts.MODELFILE,
        artifacts.PUBLISH,
    }


def test_a_new_training_makes_everything_of_the_run_stale_but_the_bases_files_and_the_logs():
    assert stale_after(artifacts.ADAPTER) == set(EVERY_KEY) - {
        artifacts.base_gguf("Q4_K_M"),
        artifacts.GGUF_VOCAB,
        artifacts.GGUF_LORA_BASE,
        artifacts.TRAIN_LOG,
        artifacts.GGUF_LOG,
    }


def test_every_declared_need_is_itself_declared():
    for declaration in artifacts.FIXED.values():
        for need in declaration.needs:
            if need != artifacts.GGUF_PREFIX:
                artifacts.declared(need)


def test_commands_name_the_run_before_their_options():
    assert artifacts.declared(Q8).command_for("lawyer") == "ftw gguf --run lawyer --quant Q8_0"
    assert artifacts.declared(artifacts.MERGED).command_for("lawyer") == "ftw export --run lawyer"
    with pytest.raises(KeyError, match="no artifact is declared"):
        artifacts.declared("ggfu_q4_k_m")


def test_forgetting_keeps_keys_an_older_ftw_recorded(tmp_path):
    recorded = {key: str(tmp_path / key) for key in (artifacts.ADAPTER, artifacts.MERGED, Q4, "something_older")}
    (tmp_path / manifest.MANIFEST).write_text(
        json.dumps({"artifacts": recorded, manifest.REMOVED: {"merged": {}}}), encoding="utf-8"
    )
    manifest.forget_from(tmp_path, artifacts.MERGED)
    data = manifest.load(tmp_path)
    assert set(data["artifacts"]) == {artifacts.ADAPTER, "something_older"}
    assert manifest.REMOVED not in data  # a new merge brings the removed intermediates back


def test_a_missing_artifact_names_the_command_that_makes_it(tmp_path):
    run = tmp_path / "lawyer"
    run.mkdir()
    (run / manifest.MANIFEST).write_text(json.dumps({"artifacts": {}}), encoding="utf-8")
    with pytest.raises(Exception, match=r"run lawyer has no Q8_0 GGUF yet\. Run `ftw gguf --run lawyer --quant Q8_0`"):
        manifest.artifact(run, Q8)
