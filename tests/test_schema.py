"""The recipe and profile schema (wrapper/config/schema.py): one dataclass per section is the
keys, types, defaults and help text; every mistake names file, line and key; the reference
page is generated from it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from wrapper.config import schema
from wrapper.config.profiles import load_profile
from wrapper.config.recipes import load_recipe
from wrapper.core.errors import FtwError

from tests.support.runner import REPO

MINIMAL = """\
model:
  base: ../models/smollm2-135m-instruct
  template: smollm2
dataset:
  - ../data/demo_lore.json
"""


def recipe_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return str(path)


def test_unset_keys_take_the_dataclass_defaults(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, MINIMAL))
    assert recipe.method == "lora" and recipe.system is None and recipe.train == {} and recipe.checks == []
    assert (recipe.data.val_ratio, recipe.data.seed, recipe.data.dedupe) == (0.1, 42, "exact")
    assert recipe.data.field_map.as_dict() == {}
    assert (recipe.eval.val_sample, recipe.eval.max_new_tokens) == (30, 64)
    assert recipe.ollama.parameters == {}


def test_values_are_typed_and_nested_sections_parsed(tmp_path):
    recipe = load_recipe(
        recipe_file(
            tmp_path,
            MINIMAL + "data:\n  val_ratio: 0\n  field_map: {instruction: q, output: a}\n"
            "checks:\n  - {prompt: Hi, expect: Hello}\n",
        )
    )
    assert recipe.data.val_ratio == 0.0 and isinstance(recipe.data.val_ratio, float)
    assert recipe.data.field_map.as_dict() == {"instruction": "q", "output": "a"}
    assert recipe.checks == [schema.Check("Hi", "Hello")]


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "model:\n  base: x\n  templte: smollm2\n",
            r"mine.yaml:8 \(key 'model.templte'\): unknown key. Did you mean 'template'\?",
        ),
        ("method: dora\n", r"mine.yaml:6 \(key 'method'\): method must be one of lora, qlora, full, found 'dora'"),
        ("eval:\n  val_sample: many\n", r"mine.yaml:7 \(key 'eval.val_sample'\): expected int, found str 'many'"),
        ("checks:\n  - {prompt: Hi}\n", r"mine.yaml:7 \(key 'checks\[0\]'\): 'checks\[0\].expect' is required"),
        ("checks: {prompt: Hi}\n", r"mine.yaml:6 \(key 'checks'\): expected list, found dict"),
        ("dataset: [1]\n", r"mine.yaml:6 \(key 'dataset\[0\]'\): expected str, found int 1"),
        (
            "ollama:\n  parameters: {num_ctx: big}\n",
            r"mine.yaml:7 \(key 'ollama.parameters.num_ctx'\): 'num_ctx' is an int",
        ),
    ],
)
def test_mistakes_name_file_line_and_key(tmp_path, extra, message):
    with pytest.raises(FtwError, match=message):
        load_recipe(recipe_file(tmp_path, MINIMAL + extra))


def test_a_missing_required_key_is_named(tmp_path):
    with pytest.raises(FtwError, match=r"mine.yaml:1 \(key 'model'\): 'model.template' is required in"):
        load_recipe(recipe_file(tmp_path, MINIMAL.replace("  template: smollm2\n", "")))


def test_profiles_are_checked_by_the_same_schema(tmp_path):
    path = tmp_path / "card.yaml"
    path.write_text("device: cuda\nmemory_gb: 12\ngpu: {compute_capabilty: 8.9}\n", encoding="utf-8")
    with pytest.raises(FtwError, match=r"card.yaml:3 \(key 'gpu.compute_capabilty'\): unknown key. Did you mean"):
        load_profile(str(path))
    rtx = load_profile("rtx4070")
    assert (rtx.memory_gb, rtx.gpu.compute_capability, rtx.gpus) == (12.0, 8.9, 1)
    assert load_profile("a100-40x8").gpus == 8


def test_set_reaches_nested_keys_and_training_keys(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, MINIMAL), ["data.val_ratio=0.05", "learning_rate=5e-5"])
    assert recipe.data.val_ratio == 0.05 and recipe.train["learning_rate"] == 5e-5


def test_every_key_has_help_text():
    for cls in (schema.Recipe, schema.Profile):
        for key, _kind, _default, help_text in schema.reference(cls):
            assert len(help_text) > 8, key


def test_the_reference_page_is_generated_from_the_schema():
    page = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    assert schema.with_reference(page) == page, "docs/reference.md is stale: run `python -m wrapper.config.schema`"
    assert "| `data.field_map.rating` | str | not set |" in page and "| `learning_rate` | `0.0001` |" in page
