"""Will it stop? The end-of-turn token is trained at render, and every end token stops serving.

Real LLaMA-Factory 0.9.5 (its SupervisedDatasetProcessor and templates), real tokenizers
(the demo's SmolLM2; Llama 3 rebuilt from llama.cpp's ggml-vocab-llama-bpe.gguf and made
Llama 3.1's), real llama.cpp (llama-cpp-python loading the GGUF's vocabulary), Go's
Modelfile grammar: no mocks.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from wrapper.core.errors import FtwError
from wrapper.core.paths import LLAMA_CPP_DIR

from tests.support.models import LLAMA31_EOS_IDS, llama31_model_dir, llama31_vocab_gguf
from tests.support.runner import REPO

DEMO_MODEL = REPO / "models" / "smollm2-135m-instruct"
IM_END_ID = 2  # <|im_end|> in SmolLM2's vocabulary


# ---- at render: does a sample answer end with a trained end-of-turn token? --------------


def test_demo_answers_end_with_a_trained_end_of_turn(runs_dir):
    from wrapper.train.render import render

    plan = render("demo", "cpu", "demo", [], [])
    assert plan.end_of_turn["token"] == "<|im_end|>"
    assert plan.end_of_turn["id"] == plan.end_of_turn["label"] == IM_END_ID
    assert re.fullmatch(r"data/demo_lore\.json:\d+", plan.end_of_turn["row"])
    assert not any("will it stop" in skipped for skipped in plan.skipped_checks)
    recorded = json.loads((runs_dir / "demo" / "manifest.json").read_text(encoding="utf-8"))["plan"]
    assert recorded["end_of_turn"] == plan.end_of_turn


@pytest.mark.parametrize(
    "overrides, says",
    [
        # LLaMA-Factory's `empty` template writes the answer and nothing after it.
        (
            ["model.template=empty"],
            r"'empty' template ends the answer of data/demo_lore\.json:\d+ without an end-of-turn",
        ),
        # Even the shortest sample answer is cut before its <|im_end|>.
        (["cutoff_len=24"], r"cutoff_len 24 cuts the answer of data/demo_lore\.json:\d+ .* before its end-of-turn"),
        # Llama 3's <|eot_id|> isn't in SmolLM2's vocabulary: LLaMA-Factory adds it untrained.
        (
            ["model.template=llama3"],
            r"ends answers with <\|eot_id\|>, which the tokenizer of .* doesn't have: .*id 49152",
        ),
    ],
    ids=["no end-of-turn", "cut by cutoff_len", "not in the vocabulary"],
)
def test_an_answer_that_wont_teach_stopping_stops_render(runs_dir, overrides, says):
    from wrapper.train.render import render

    with pytest.raises(FtwError, match=says) as caught:
        render("demo", "cpu", "demo", [], overrides)
    assert re.search(r"ftw render --recipe demo --profile cpu --run demo( --set \S+)*$", str(caught.value))
    assert not (runs_dir / "demo").exists(), "render wrote files before the check"


def test_the_fixes_the_messages_give_pass(runs_dir):
    from wrapper.train.render import render

    message = ""
    try:
        render("demo", "cpu", "demo", [], ["cutoff_len=24"])
    except FtwError as exc:
        message = str(exc)
    raised = re.search(r"--set (cutoff_len=\d+)$", message).group(1)
    assert render("demo", "cpu", "demo", [], [raised]).end_of_turn["id"] == IM_END_ID
    # The new token is trained once resize_vocab makes LLaMA-Factory train the embeddings.
    plan = render("demo", "cpu", "demo", [], ["model.template=llama3", "resize_vocab=true"])
    assert plan.end_of_turn["token"] == "<|eot_id|>" and plan.end_of_turn["id"] == 49152


def test_an_end_of_turn_with_label_minus_100_is_caught(runs_dir):
    """The classic "never stops": pad == eos, and a collator that masks padding by id masks the eos.
    LLaMA-Factory sets pad = eos for SmolLM2 (it has no pad token); transformers'
    DataCollatorForLanguageModeling then labels every <|im_end|> -100, the answer's too."""
    from transformers import DataCollatorForLanguageModeling

    from wrapper.prompts.training_format import training_format
    from wrapper.train.render import render
    from wrapper.train.stops import encode_row, end_of_turn, sample_row

    plan = render("demo", "cpu", "demo", [], [])
    fmt = training_format(DEMO_MODEL, plan.template, None)
    sample = sample_row(plan)
    encoded = encode_row(fmt, sample.row, plan.train_args)
    assert end_of_turn(encoded, fmt, plan, sample.where)["label"] == IM_END_ID  # as LLaMA-Factory labels it
    assert fmt.tokenizer.pad_token_id == IM_END_ID
    batch = DataCollatorForLanguageModeling(fmt.tokenizer, mlm=False)([{"input_ids": encoded.input_ids}])
    encoded.labels = batch["labels"][0].tolist()
    with pytest.raises(FtwError, match=r"<\|im_end\|> \(id 2\) .* has label -100 \(IGNORE_INDEX: not trained\)") as e:
        end_of_turn(encoded, fmt, plan, sample.where)
    assert "pad == eos" in str(e.value) and str(e.value).endswith("ftw render --recipe demo --profile cpu --run demo")


def test_a_base_whose_tokenizer_is_not_here_skips_the_check_and_says_so(runs_dir):
    from wrapper.train.render import render

    plan = render("qwen3-8b", "cpu", "hub", [], [])
    assert plan.end_of_turn is None
    assert any("will it stop" in skipped and "Qwen/Qwen3-8B" in skipped for skipped in plan.skipped_checks)


# ---- after export: every end token is a Modelfile stop and ends generation in the GGUF ----


def test_generation_config_eos_ids_become_modelfile_stops(tmp_path):
    """A model whose generation_config.json lists an eos id the template doesn't stop on gets that stop too."""
    from wrapper.prompts import gorender
    from wrapper.prompts.end_tokens import end_tokens
    from wrapper.prompts.training_format import training_format
    from wrapper.serve.modelfile import added_stop_notes, modelfile_text, stop_tokens

    model = tmp_path / "merged"
    model.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(DEMO_MODEL / name, model / name)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [IM_END_ID, 0]}), encoding="utf-8")
    fmt = training_format(model, "smollm2", None)

    assert stop_tokens(end_tokens(fmt)) == ["<|im_end|>"]  # the template and the tokenizer alone
    stops = stop_tokens(end_tokens(fmt, model), ["###"])
    assert stops == ["<|im_end|>", "<|endoftext|>", "###"]
    notes = added_stop_notes(end_tokens(fmt, model))
    assert notes == [
        'stop "<|endoftext|>" (id 0): generation_config.json\'s eos_token_id lists it; the training template does not'
    ]
    text = modelfile_text(
        run="r",
        gguf_from="./r.gguf",
        template_name="smollm2",
        go_template="{{ .Prompt }}",
        system="",
        stops=stops,
        parameters=[],
        create_hint="ollama create r",
        stop_notes=notes,
    )
    assert f"# {notes[0]}\n" in text
    if gorender.available():  # read back with Ollama's own Modelfile grammar
        assert [value for name, value in gorender.parse_modelfile(text) if name == "stop"] == stops


@pytest.mark.slow
def test_llama31_end_tokens_stop_ollama_and_llama_cpp(tmp_path):
    """Llama 3.1's generation_config.json ends generation at <|end_of_text|>, <|eom_id|> and <|eot_id|>;
    the llama3 template stops on the last two only. All three become stops, and llama.cpp ends
    generation at all three in a Llama 3.1 vocabulary; in Llama 3's, 128008 is a reserved token it
    would generate through, and the GGUF stage refuses that file naming the id."""
    from wrapper.core import manifest
    from wrapper.gguf.convert import check_end_tokens
    from wrapper.prompts.end_tokens import GENERATION_CONFIG, GgufEnds, end_tokens, gguf_end_problems
    from wrapper.prompts.training_format import training_format
    from wrapper.serve.modelfile import added_stop_notes, stop_tokens

    model = llama31_model_dir()
    fmt = training_format(model, "llama3", None)
    ends = end_tokens(fmt, model)
    assert {end.id for end in ends if end.ends_generation} == set(LLAMA31_EOS_IDS)
    assert stop_tokens(end_tokens(fmt, model)) == ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]
    assert [note.split(" (")[0] for note in added_stop_notes(ends)] == ['stop "<|end_of_text|>"']

    llama31 = GgufEnds.read(llama31_vocab_gguf(), LLAMA31_EOS_IDS)
    assert llama31.eog == {128001: True, 128008: True, 128009: True}
    assert gguf_end_problems(llama31, ends) == []
    run = tmp_path / "run"
    run.mkdir()
    manifest.save(run, {"artifacts": {}})
    check_end_tokens(llama31_vocab_gguf(), model, fmt, run)
    recorded = {entry["id"]: entry for entry in manifest.load(run)["end_tokens"]["gguf"]}
    assert recorded[128001] == {
        "token": "<|end_of_text|>",
        "id": 128001,
        "from": [GENERATION_CONFIG],
        "eog": True,
        "control": True,
    }

    llama3 = LLAMA_CPP_DIR / "models" / "ggml-vocab-llama-bpe.gguf"
    assert GgufEnds.read(llama3, LLAMA31_EOS_IDS).eog[128008] is False
    with pytest.raises(FtwError, match=r"does not end generation at '<\|reserved_special_token_4\|>' \(id 128008") as e:
        check_end_tokens(llama3, model, fmt, run)
    assert str(e.value).endswith("ftw gguf --run run") and "generation_config.json" in str(e.value)


def test_demo_run_stops_in_every_artifact(demo_run):
    """The shared demo run (conftest): render recorded the trained <|im_end|>, the GGUF stage
    checked llama.cpp ends generation at it, and the Modelfile stops on it."""
    from wrapper.core import manifest
    from wrapper.prompts import gorender
    from wrapper.prompts.end_tokens import GgufEnds

    data = manifest.load(demo_run)
    assert data["plan"]["end_of_turn"]["token"] == "<|im_end|>" and data["plan"]["end_of_turn"]["label"] == IM_END_ID
    gguf_ends = {entry["id"]: entry for entry in data["end_tokens"]["gguf"]}
    assert gguf_ends[IM_END_ID]["eog"] and gguf_ends[IM_END_ID]["control"]
    assert [entry["token"] for entry in data["end_tokens"]["modelfile"]] == ["<|im_end|>"]
    text = (demo_run / "Modelfile").read_text(encoding="utf-8")
    if gorender.available():
        assert [value for name, value in gorender.parse_modelfile(text) if name == "stop"] == ["<|im_end|>"]
    else:
        assert 'PARAMETER stop "<|im_end|>"' in text
    quantized = Path(data["artifacts"]["gguf_q4_k_m"])
    assert GgufEnds.read(quantized, [IM_END_ID]).eog == {IM_END_ID: True}  # the quantized file inherits it
