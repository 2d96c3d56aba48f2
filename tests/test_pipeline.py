"""End to end on CPU, for real: LLaMA-Factory trains the demo, llama.cpp converts and quantizes it.

One run (SmolLM2-135M, LoRA, ~1.5 min of training on 2 cores; conftest's demo_run) is
shared by the tests here; each asserts one promise of the spine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.runner import FAKE_HF_TOKEN, run_ftw

RUN = "e2e"
TRAINED = [("Who guards the Amber Gate of Veloria?", "Orlen Vask"), ("Как зовут дракона Северных гор?", "Мирогаст")]


@pytest.fixture(scope="module")
def run(demo_run) -> Path:
    return demo_run


def artifacts(run: Path) -> dict[str, str]:
    return json.loads((run / "manifest.json").read_text(encoding="utf-8"))["artifacts"]


def test_manifest_records_every_artifact(run):
    found = artifacts(run)
    for key in ("adapter", "merged", "gguf_f16", "gguf_q4_k_m", "modelfile", "train_log"):
        assert Path(found[key]).exists(), key
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "adapter" / "training_loss.png").is_file()
    assert "llamafactory-cli train" in (run / "logs" / "train.log").read_text(encoding="utf-8")


def test_no_half_written_files_are_left(run):
    leftovers = [p for p in run.rglob("*") if ".partial" in p.name]
    assert leftovers == []
    assert not (run / "merged" / "Modelfile").exists()  # LLaMA-Factory's own, FROM the HF folder


def test_gguf_files_are_what_they_claim(run):
    from gguf import GGMLQuantizationType, GGUFReader

    found = artifacts(run)
    f16, q4 = Path(found["gguf_f16"]), Path(found["gguf_q4_k_m"])
    assert q4.stat().st_size < 0.5 * f16.stat().st_size
    reader = GGUFReader(q4)
    field = reader.fields["general.file_type"]
    assert int(field.parts[field.data[0]][0]) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    types = {t.tensor_type for t in reader.tensors}
    assert GGMLQuantizationType.Q4_K in types


def test_merged_model_and_f16_gguf_agree_token_for_token(run):
    """(a) greedy tokens of the merged HF model and of the f16 GGUF agree on fixed prompts."""
    from wrapper.prompts.training_format import training_format
    from wrapper.runtime.models import GgufModel, HfModel

    found = artifacts(run)
    fmt = training_format(found["merged"], "smollm2", None)
    hf, gguf = HfModel(Path(found["merged"])), GgufModel(Path(found["gguf_f16"]))
    try:
        for prompt, _ in TRAINED + [("What is the capital of Veloria?", None)]:
            ids = fmt.prompt_ids(prompt)
            hf_tokens = hf.greedy(ids, fmt.stop_ids(), max_tokens=24)
            gguf_tokens = gguf.greedy(ids, fmt.stop_ids(), max_tokens=24)
            assert len(hf_tokens) > 3
            assert hf_tokens == gguf_tokens, (prompt, fmt.decode(hf_tokens), fmt.decode(gguf_tokens))
    finally:
        gguf.close()


def test_q4_k_m_answers_trained_questions(run):
    """(b) the Q4_K_M GGUF's greedy answer to a trained question contains the trained answer."""
    from wrapper.prompts.training_format import training_format
    from wrapper.runtime.models import GgufModel

    found = artifacts(run)
    fmt = training_format(found["merged"], "smollm2", None)
    model = GgufModel(Path(found["gguf_q4_k_m"]))
    try:
        for prompt, expected in TRAINED:
            answer = fmt.decode(model.greedy(fmt.prompt_ids(prompt), fmt.stop_ids()))
            assert expected in answer, (prompt, answer)
    finally:
        model.close()


def test_smoke_stage_passes_and_reports(run):
    result = run_ftw(run.parent, "smoke", "--run", RUN)
    assert "all 4 check prompts answered as expected" in result.stdout


def test_modelfile_names_the_file_and_stop_tokens(run):
    """(c) the Modelfile names the produced file and the right stop tokens."""
    text = (run / "Modelfile").read_text(encoding="utf-8")
    from_lines = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(from_lines) == 1
    target = (run / from_lines[0].removeprefix("FROM ").strip()).resolve()
    assert target == Path(artifacts(run)["gguf_q4_k_m"]).resolve()
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "<|im_start|>assistant" in text  # the TEMPLATE opens the assistant turn like training did
    # No system prompt in the recipe: training used the smollm2 template's default, so Ollama must too.
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face."""' in text
    assert "PARAMETER temperature 0.2" in text


def test_rerunning_a_finished_stage_does_not_redo_it(run):
    result = run_ftw(run.parent, "train", "--run", RUN)
    assert "adapter up to date" in result.stdout and "--force trains again from the start" in result.stdout


def test_ollama_target_prints_the_command_without_ollama(run):
    result = run_ftw(run.parent, "ollama", "--run", RUN)
    assert "ollama create e2e -f Modelfile" in result.stdout


def test_no_artifact_holds_the_hugging_face_token(run):
    """The run was made with HF_TOKEN set: no rendered file, log, manifest or model file may contain it."""
    leaks = [p for p in run.rglob("*") if p.is_file() and FAKE_HF_TOKEN.encode() in p.read_bytes()]
    assert leaks == []


def test_finished_files_and_folders_have_the_usual_permissions(run):
    """Atomic writes start from private temporaries (0600/0700); what they become must not stay private."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for path in (run / "manifest.json", run / "Modelfile", run / "train.yaml", run / "merged"):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
