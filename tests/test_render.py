"""Rendering and validation: every mistake is caught before anything long starts."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jinja2
import pytest
import yaml

from wrapper.core.errors import FtwError
from wrapper.core.templates import template_env
from wrapper.train.render import render

from tests.support.runner import REPO, run_ftw

DEMO_MODEL = REPO / "models" / "smollm2-135m-instruct"
DEMO_DATA = REPO / "data" / "demo_lore.json"


def write_recipe(folder: Path, body: str, name: str = "mine.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def minimal_recipe(folder: Path, extra: str = "", dataset: Path = DEMO_DATA, base: Path = DEMO_MODEL) -> Path:
    return write_recipe(
        folder,
        f"""\
        model:
          base: {base}
          template: smollm2
        method: lora
        dataset:
          - {dataset}
        train:
          cutoff_len: 128
        """
        + textwrap.dedent(extra),
    )


def test_demo_renders_and_validates(runs_dir):
    plan = render("demo", "cpu", "demo", [], [])
    train = yaml.safe_load((runs_dir / "demo" / "train.yaml").read_text(encoding="utf-8"))
    # the tests compute in float32 (conftest.py): the demo's bfloat16 base is loaded through its float32 config
    assert train["model_name_or_path"] == str(runs_dir / "demo" / "base-float32")
    assert plan.base_model == str(DEMO_MODEL)
    assert train["template"] == "smollm2"
    assert train["output_dir"] == str(runs_dir / "demo" / "adapter")
    assert train["bf16"] is False  # from the cpu profile
    assert train["lora_rank"] == 16  # from the recipe, over the default
    info = json.loads((runs_dir / "demo" / "dataset_info.json").read_text(encoding="utf-8"))
    (entry,) = info.values()
    assert entry["file_name"] == str(DEMO_DATA)
    assert entry["formatting"] == "alpaca"
    assert "history" not in entry["columns"]  # not in the file: LLaMA-Factory would fail on it
    export = yaml.safe_load((runs_dir / "demo" / "export.yaml").read_text(encoding="utf-8"))
    assert export["adapter_name_or_path"] == str(runs_dir / "demo" / "adapter")
    manifest = json.loads((runs_dir / "demo" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["recipe"] == "demo" and manifest["profile"] == "cpu"
    assert manifest["datasets"][0]["rows"] == 30 and len(manifest["datasets"][0]["sha256"]) == 64
    assert len(manifest["versions"]["llama.cpp"]) == 40
    assert manifest["versions"]["llamafactory"] == "0.9.5"
    assert plan.merge_base == str(DEMO_MODEL)


def test_rendered_yaml_names_the_origin_of_each_value(runs_dir):
    render("demo", "cpu", "demo", [], ["learning_rate=5e-5"])
    text = (runs_dir / "demo" / "train.yaml").read_text(encoding="utf-8")
    assert "learning_rate: 5.0e-05  # --set" in text
    assert "lora_rank: 16  # recipes/demo.yaml:" in text
    assert yaml.safe_load(text)["learning_rate"] == 5e-5


@pytest.mark.parametrize(
    "name, message",
    [
        ("nope", "unknown recipe 'nope'"),
        ("dem", "Did you mean 'demo'?"),
    ],
)
def test_unknown_recipe(runs_dir, name, message):
    with pytest.raises(FtwError, match=message):
        render(name, "cpu", "r", [], [])


def test_unknown_profile(runs_dir):
    with pytest.raises(FtwError, match="unknown profile 'cpuu'.*Did you mean 'cpu'"):
        render("demo", "cpuu", "r", [], [])


def test_unknown_llamafactory_key_names_file_line_and_suggestion(runs_dir, tmp_path):
    recipe = minimal_recipe(tmp_path)
    recipe.write_text(
        recipe.read_text(encoding="utf-8").replace("  cutoff_len: 128\n", "  cutoff_len: 128\n  lora_rnak: 8\n"),
        encoding="utf-8",
    )
    with pytest.raises(FtwError) as error:
        render(str(recipe), "cpu", "r", [], [])
    message = str(error.value)
    assert f"{recipe}:9" in message or "mine.yaml:9" in message
    assert "no argument 'lora_rnak'" in message and "Did you mean 'lora_rank'?" in message


def test_wrong_type_is_caught_although_llamafactory_accepts_it(runs_dir, tmp_path):
    recipe = minimal_recipe(tmp_path)
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("cutoff_len: 128", "lora_rank: abc"), encoding="utf-8")
    with pytest.raises(FtwError, match=r"mine.yaml:8 \(key 'train.lora_rank'\): 'lora_rank' must be int"):
        render(str(recipe), "cpu", "r", [], [])


def test_llamafactory_rejection_points_at_the_key(runs_dir, tmp_path):
    recipe = minimal_recipe(tmp_path)
    recipe.write_text(
        recipe.read_text(encoding="utf-8").replace("cutoff_len: 128", "neat_packing: true\n  stage: pt"),
        encoding="utf-8",
    )
    with pytest.raises(FtwError) as error:
        render(str(recipe), "cpu", "r", [], [])
    assert "LLaMA-Factory rejects r/train.yaml: `neat_packing` cannot be set as True except SFT" in str(error.value)
    assert "mine.yaml:8 (key 'train.neat_packing')" in str(error.value)


def test_unknown_recipe_section_suggests(runs_dir, tmp_path):
    recipe = minimal_recipe(tmp_path, "sytem: hello\n")
    with pytest.raises(FtwError, match="mine.yaml:9 \\(key 'sytem'\\): unknown key. Did you mean 'system'?"):
        render(str(recipe), "cpu", "r", [], [])


def test_yaml_syntax_error_shows_line(runs_dir, tmp_path):
    recipe = write_recipe(tmp_path, "model:\n  base: [unclosed\nmethod: lora\n")
    with pytest.raises(FtwError, match=r"mine.yaml:3:\d+: YAML syntax error"):
        render(str(recipe), "cpu", "r", [], [])


def test_missing_model_folder(runs_dir, tmp_path):
    recipe = minimal_recipe(tmp_path, base=tmp_path / "no-such-model")
    with pytest.raises(FtwError, match=r"mine.yaml:2 \(key 'model.base'\): model folder not found"):
        render(str(recipe), "cpu", "r", [], [])


QWEN2_VOCAB_GGUF = REPO / "vendor" / "llama.cpp" / "models" / "ggml-vocab-qwen2.gguf"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"is a GGUF file, llama.cpp's format for running a model .* can't be fine-tuned"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n",
            r"named .gguf but is not a GGUF file but a Git LFS pointer",
        ),
        ("cut", r"named .gguf but is not a readable GGUF file, probably cut off"),
        (b"<!DOCTYPE html><html>", r"is not a GGUF file but a web page"),
    ],
)
def test_gguf_as_base_model_says_what_it_is(runs_dir, tmp_path, content, message):
    base = tmp_path / "мой model.gguf"
    if content is None:
        base.write_bytes(QWEN2_VOCAB_GGUF.read_bytes())
    elif content == "cut":
        base.write_bytes(QWEN2_VOCAB_GGUF.read_bytes()[:100_000])
    else:
        base.write_bytes(content)
    recipe = minimal_recipe(tmp_path, base=base)
    with pytest.raises(
        FtwError, match=r"mine.yaml:2 \(key 'model.base'\): .*" + message + r".*Hugging Face model folder"
    ):
        render(str(recipe), "cpu", "r", [], [])


def test_a_file_that_is_not_a_gguf_is_refused_before_llama_cpp_loads_it(tmp_path):
    from wrapper.runtime.models import GgufModel

    fake = tmp_path / "runs" / "r1" / "gguf" / "r1-Q4_K_M.gguf"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(QWEN2_VOCAB_GGUF.read_bytes()[:4096])
    with pytest.raises(
        FtwError, match=r"r1-Q4_K_M.gguf is not a readable GGUF file, probably cut off.*ftw gguf --run r1 --force"
    ):
        GgufModel(fake)


def test_paths_with_spaces_and_non_ascii_letters_render(tmp_path, monkeypatch):
    folder = tmp_path / "мои данные" / "with spaces"
    folder.mkdir(parents=True)
    data = folder / "лор данные.json"
    data.write_bytes(DEMO_DATA.read_bytes())
    monkeypatch.setenv("FTW_RUNS_DIR", str(folder / "прогоны"))
    recipe = minimal_recipe(folder)
    plan = render(str(recipe), "cpu", "r1", [str(data)], [])
    info = json.loads((plan.dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert [entry["file_name"] for entry in info.values()] == [str(data)]
    assert yaml.safe_load((plan.dir / "train.yaml").read_text(encoding="utf-8"))["output_dir"] == str(
        plan.dir / "adapter"
    )


def test_run_names_are_ascii_because_they_name_the_ollama_model(runs_dir):
    with pytest.raises(FtwError, match=r"--run 'прогон': use ASCII letters.*Ollama model.*FTW_RUNS_DIR"):
        render("demo", "cpu", "прогон", [], [])


def test_unknown_chat_template(runs_dir, tmp_path):
    recipe = minimal_recipe(tmp_path)
    recipe.write_text(
        recipe.read_text(encoding="utf-8").replace("template: smollm2", "template: smolm2"), encoding="utf-8"
    )
    with pytest.raises(FtwError, match=r"model.template'\): LLaMA-Factory has no chat template 'smolm2'.*smollm2"):
        render(str(recipe), "cpu", "r", [], [])


def test_owned_key_in_train_section(runs_dir, tmp_path):
    recipe = minimal_recipe(tmp_path)
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("cutoff_len: 128", "template: qwen"), encoding="utf-8")
    with pytest.raises(FtwError, match="'template' is set by ftw from model.template"):
        render(str(recipe), "cpu", "r", [], [])


def test_missing_dataset_file(runs_dir, tmp_path):
    with pytest.raises(FtwError, match="dataset file not found: .*nothing.json"):
        render("demo", "cpu", "r", [str(tmp_path / "nothing.json")], [])


@pytest.mark.parametrize("content", ["[]", "", "\n\n"])
def test_empty_dataset(runs_dir, tmp_path, content):
    data = tmp_path / ("empty.json" if content == "[]" else "empty.jsonl")
    data.write_text(content, encoding="utf-8")
    with pytest.raises(FtwError, match="the dataset has no rows"):
        render("demo", "cpu", "r", [str(data)], [])


def test_invalid_jsonl_line_is_named(runs_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", oops}\n', encoding="utf-8")
    with pytest.raises(FtwError, match=r"bad.jsonl:2: invalid JSON"):
        render("demo", "cpu", "r", [str(data)], [])


def test_user_data_replaces_recipe_dataset_in_each_format(runs_dir, tmp_path):
    sharegpt = tmp_path / "chats.jsonl"
    sharegpt.write_text(
        json.dumps(
            {"conversations": [{"from": "human", "value": "Привет"}, {"from": "gpt", "value": "Здравствуйте"}]},
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    openai = tmp_path / "messages.json"
    openai.write_text(
        json.dumps([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]),
        encoding="utf-8",
    )
    plan = render("demo", "cpu", "mine", [str(sharegpt), str(openai)], [])
    assert [d["format"] for d in plan.datasets] == ["sharegpt", "openai"]
    info = json.loads((runs_dir / "mine" / "dataset_info.json").read_text(encoding="utf-8"))
    assert [entry["file_name"] for entry in info.values()] == [str(sharegpt), str(openai)]
    assert list(info.values())[1]["tags"]["role_tag"] == "role"
    assert str(DEMO_DATA) not in (runs_dir / "mine" / "dataset_info.json").read_text(encoding="utf-8")


def test_unknown_row_format(runs_dir, tmp_path):
    data = tmp_path / "odd.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n', encoding="utf-8")
    with pytest.raises(FtwError, match=r"odd.jsonl:1: unknown format \(keys: question, answer\)"):
        render("demo", "cpu", "r", [str(data)], [])


def test_set_rejects_malformed_override(runs_dir):
    with pytest.raises(FtwError, match="expected key=value"):
        render("demo", "cpu", "r", [], ["learning_rate"])


def test_templates_refuse_undefined_values():
    template = template_env().from_string("model: {{ missing }}")
    with pytest.raises(jinja2.UndefinedError):
        template.render()


def test_cli_reports_bad_input_with_nonzero_exit(tmp_path):
    result = run_ftw(tmp_path / "runs", "render", "--recipe", "nope", "--profile", "cpu", "--run", "r", check=False)
    assert result.returncode == 2
    assert "error:" in result.stderr and "unknown recipe 'nope'" in result.stderr
    assert not (tmp_path / "runs" / "r").exists()


def test_stage_on_a_run_that_does_not_exist(tmp_path):
    result = run_ftw(tmp_path / "runs", "train", "--run", "ghost", check=False)
    assert result.returncode == 2
    assert "no run 'ghost'" in result.stderr and "ftw render" in result.stderr


def test_gpu_profile_renders_on_a_machine_without_gpu(runs_dir):
    """On CPU, LLaMA-Factory's full check would refuse bf16 for want of a GPU, not for the
    config; keys and types are still checked against its argument dataclasses."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test is about machines without a GPU")
    render("demo", "cuda", "gpu", [], [])
    train = yaml.safe_load((runs_dir / "gpu" / "train.yaml").read_text(encoding="utf-8"))
    assert train["bf16"] is True and train["gradient_accumulation_steps"] == 8
    with pytest.raises(FtwError, match="'bf16' must be bool"):
        render("demo", "cuda", "gpu", [], ["bf16=maybe"])


@pytest.mark.parametrize(
    "base, merge_base",
    [
        ("Qwen/Qwen3-8B", "Qwen/Qwen3-8B"),
        ("unsloth/Qwen3-8B-unsloth-bnb-4bit", "unsloth/Qwen3-8B"),
        ("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "unsloth/Meta-Llama-3.1-8B-Instruct"),
    ],
)
def test_hub_bases_render_offline_and_merge_into_full_precision(runs_dir, tmp_path, monkeypatch, base, merge_base):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = write_recipe(
        tmp_path,
        f"""\
        model: {{base: {base}, template: qwen3_nothink}}
        method: qlora
        dataset: [{DEMO_DATA}]
        """,
    )
    plan = render(str(recipe), "cuda", "hub", [], [])
    train = yaml.safe_load((runs_dir / "hub" / "train.yaml").read_text(encoding="utf-8"))
    export = yaml.safe_load((runs_dir / "hub" / "export.yaml").read_text(encoding="utf-8"))
    assert train["model_name_or_path"] == base
    assert export["model_name_or_path"] == merge_base
    # On-the-fly 4-bit only for a full-precision base; a bnb checkpoint is already 4-bit.
    assert train.get("quantization_bit") == (None if "bnb" in base else 4)
    assert plan.base_quantization == ("bitsandbytes" if "bnb" in base else None)


def test_tokens_are_refused_in_recipes(runs_dir):
    with pytest.raises(FtwError, match="a token doesn't belong in a recipe.*HF_TOKEN"):
        render("demo", "cpu", "r", [], ["hf_hub_token=hf_abc"])
    assert not (runs_dir / "r").exists()
