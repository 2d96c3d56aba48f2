"""`ftw eval` and `ftw report` on the real demo run (a linked copy of conftest's demo_run; nothing is
trained here).

The evaluation runs twice: first with --limit 2 (a short, partial evaluation), then in full;
the second must keep the first one's rows (resume), not answer them again.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser

import pytest

from tests.support.runner import linked_copy, run_ftw

RUN = "e2e"


@pytest.fixture(scope="module")
def evaluated(demo_run, tmp_path_factory) -> dict:
    run = linked_copy(demo_run, tmp_path_factory.mktemp("eval") / "runs")  # the shared run stays as it was
    rows_file = run / "eval" / "rows.jsonl"
    run_ftw(run.parent, "eval", "--run", RUN, "--limit", "2")
    first = rows_file.read_text(encoding="utf-8").splitlines()
    result = run_ftw(run.parent, "eval", "--run", RUN)
    return {
        "run": run,
        "first": first,
        "stdout": result.stdout,
        "all": rows_file.read_text(encoding="utf-8").splitlines(),
        "eval": json.loads((run / "eval.json").read_text(encoding="utf-8")),
    }


def test_eval_json_has_the_promised_numbers(evaluated):
    result = evaluated["eval"]
    assert result["sets"]["control"]["rows"] >= 10
    assert result["sets"]["val"]["seen_in_training"] is True  # the demo has no `ftw data prepare` split
    for set_name in ("control", "val", "general"):
        for model in ("base", "merged", "gguf:Q4_K_M"):
            block = result["aggregate"][set_name][model]
            assert block["rows"] > 0
            for metric in ("exact_match", "token_f1", "rouge_l", "length_ratio"):
                assert 0 <= block[metric] <= (10 if metric == "length_ratio" else 1), (set_name, model, metric)
    # the fine-tune learned the lore: the GGUF beats the base model on the control prompts
    control = result["aggregate"]["control"]
    assert control["gguf:Q4_K_M"]["contains"] > control["base"]["contains"] + 0.3
    assert control["gguf:Q4_K_M"]["rouge_l"] > control["base"]["rouge_l"]
    quant = result["quantization"]
    assert quant["perplexity"]["f16"]["perplexity"] >= 1.0
    assert quant["perplexity"]["Q4_K_M"]["perplexity"] >= 1.0
    assert 0 <= quant["identical_greedy"]["Q4_K_M"]["control"]["share"] <= 1
    models = {row["model"] for row in result["rows"]}
    assert models == {"base", "merged", "gguf:Q4_K_M"} and result["gguf_quants"] == ["Q4_K_M"]  # the demo's one
    russian = [r for r in result["rows"] if r["lang"] == "ru" and r["model"] == "gguf:Q4_K_M" and r["set"] == "control"]
    assert russian and max(r["metrics"]["rouge_l"] for r in russian) > 0.5  # Cyrillic is scored, not dropped
    per_language = result["by_language"]["control"]  # the control set mixes en and ru: judged per language
    assert set(per_language) == {"en", "ru"}
    assert sum(block["gguf:Q4_K_M"]["rows"] for block in per_language.values()) == control["gguf:Q4_K_M"]["rows"]
    assert "## Per language" in (evaluated["run"] / "report.md").read_text(encoding="utf-8")


def test_the_knowledge_section_scores_base_and_tuned_on_held_out_phrasings(evaluated):
    """The demo's lore carries `fact`: prepare held two phrasings of each fact out (probes) and one fact whole
    (unseen); eval asks them of the base, the merged model and the GGUF, and the fine-tune knows more."""
    knowledge = evaluated["eval"]["knowledge"]
    models = {"base", "merged", "gguf:Q4_K_M"}
    probes = knowledge["key_match"]["probes"]
    assert set(probes) == models
    # three or fewer facts in each of its languages: too few for four options, and eval says so
    assert knowledge["multiple_choice"] == {} and any(
        "Multiple choice asked 0 of the 10" in n for n in knowledge["notes"]
    )
    assert {block["n"] for block in probes.values()} == {knowledge["sets"]["probes"]["rows"]} == {10}
    assert probes["merged"]["accuracy"] > probes["base"]["accuracy"]
    assert probes["gguf:Q4_K_M"]["accuracy"] > probes["base"]["accuracy"]
    for block in knowledge["key_match"]["unseen"].values():  # graded three ways: right, wrong, abstained
        assert block["correct"] + block["incorrect"] + block["not_attempted"] == block["n"] == 5
    assert "Held-out phrasings: base" in evaluated["stdout"]
    assert "Does it know the documents" in (evaluated["run"] / "report.md").read_text(encoding="utf-8")


def test_forgetting_check_catches_what_the_demo_forgot(evaluated):
    forgetting = evaluated["eval"]["forgetting"]
    assert forgetting["known_by_base"] >= 3
    assert forgetting["gguf:Q4_K_M"]["forgotten"] >= 1
    lost = forgetting["gguf:Q4_K_M"]["forgotten_prompts"][0]
    assert lost["expect"].casefold() in lost["base_answer"].casefold()
    assert lost["expect"].casefold() not in lost["answer"].casefold()
    assert "forgot" in evaluated["stdout"]
    assert "Forgotten by the fine-tune" in (evaluated["run"] / "report.md").read_text(encoding="utf-8")


def test_resume_keeps_rows_already_scored(evaluated):
    first, everything = evaluated["first"], evaluated["all"]
    assert len(first) > 0 and len(everything) > len(first)
    assert everything[: len(first)] == first  # appended, the first rows untouched
    keys = [json.loads(line)["key"] for line in everything]
    assert len(keys) == len(set(keys))  # nothing answered twice
    assert "kept from before" in evaluated["stdout"] or "already scored" in evaluated["stdout"]


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        elif tag not in ("meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open[-3:])
        self.open.pop()


def test_html_report_is_self_contained_with_plots(evaluated):
    import matplotlib.image

    run = evaluated["run"]
    page = (run / "report.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(page)
    assert parser.open == []  # every element closed
    assert len(parser.sources) >= 4  # loss, learning rate, distributions, base vs tuned
    for source in parser.sources:
        assert source.startswith("data:image/png;base64,")
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(source.split(",", 1)[1])), format="png")
        assert image.shape[0] > 100 and image.shape[1] > 100
    markdown = (run / "report.md").read_text(encoding="utf-8")
    assert "![loss](report/loss.png)" in markdown and (run / "report" / "loss.png").is_file()


def test_report_compares_two_runs(evaluated, tmp_path):
    run = evaluated["run"]
    other = run.parent / "e2e-copy"
    other.mkdir(exist_ok=True)
    for name in ("manifest.json", "eval.json"):
        shutil.copy(run / name, other / name)
    out = tmp_path / "compare.md"
    result = run_ftw(run.parent, "report", "--run", RUN, "--run", "e2e-copy", "--out", str(out))
    assert "perplexity GGUF" in result.stdout
    table = out.read_text(encoding="utf-8")
    assert "|  | e2e | e2e-copy |" in table
    assert "| quantized GGUF | Q4_K_M | Q4_K_M |" in table  # each run names the GGUF it scored
    assert "forgotten by the GGUF" in table
    shutil.rmtree(other)


@pytest.mark.parametrize("recipe_name", ["qwen3-8b", "qwen3-4b", "llama31-8b", "saiga-llama3-8b", "qvikhr3-4b"])
def test_shipped_chat_recipes_come_with_a_ru_en_forgetting_check(recipe_name):
    from wrapper.config.recipes import load_recipe
    from wrapper.eval.sets import read_prompt_file

    recipe = load_recipe(recipe_name)
    items = read_prompt_file(recipe.folder / recipe.eval.general, "general")
    languages = [item.lang for item in items]
    assert len(items) >= 10 and languages.count("ru") >= 5 and languages.count("en") >= 5
    assert all(item.expect for item in items)


def test_rows_written_after_a_cut_off_line_survive_the_next_resume(tmp_path):
    from wrapper.core.journal import Journal

    path = tmp_path / "rows.jsonl"
    path.write_text('{"key": "a", "answer": "1"}\n{"key": "b", "ans', encoding="utf-8")  # killed mid-write
    with Journal(path, "key") as rows:
        assert set(rows.entries) == {"a"}
        rows.append({"key": "c", "answer": "3"})
    assert set(Journal(path, "key").entries) == {"a", "c"}
    assert path.read_text(encoding="utf-8").count("\n") == 2  # the torn line was cut off, not kept as junk


def test_a_journal_line_changed_by_hand_is_named_not_skipped(tmp_path):
    from wrapper.core.errors import FtwError
    from wrapper.core.journal import Journal

    path = tmp_path / "journal.jsonl"
    path.write_text('{"chunk": "a"}\nnot json\n{"chunk": "b"}\n', encoding="utf-8")
    with pytest.raises(FtwError, match=r"journal.jsonl:2: not a journal entry"):
        Journal(path, "chunk")


def test_eval_reads_its_settings_from_the_plan_not_the_recipe(runs_dir, tmp_path):
    """--set eval.… at render is kept, and a recipe edited (or gone) afterwards changes nothing."""
    from wrapper.core import manifest
    from wrapper.core.paths import RECIPES_DIR
    from wrapper.eval.sets import plan_eval
    from wrapper.train.render import render

    recipe = tmp_path / "mine.yaml"
    text = (RECIPES_DIR / "demo.yaml").read_text(encoding="utf-8")
    recipe.write_text(
        text.replace("../data/", f"{RECIPES_DIR.parent}/data/").replace("../models/", f"{RECIPES_DIR.parent}/models/"),
        encoding="utf-8",
    )
    render(str(recipe), "cpu", "planned", [], ["eval.val_sample=3", "eval.max_new_tokens=7"])
    recipe.unlink()
    settings = plan_eval(manifest.plan_of(runs_dir / "planned"))
    assert settings["val_sample"] == 3 and settings["max_new_tokens"] == 7
    assert settings["control"] == str(RECIPES_DIR.parent / "data" / "eval" / "demo.jsonl")
    sources = "".join(p.read_text(encoding="utf-8") for p in (RECIPES_DIR.parent / "wrapper" / "eval").glob("*.py"))
    assert "load_recipe" not in sources and "config.recipes" not in sources


@pytest.fixture(scope="module")
def q8_only(demo_run, tmp_path_factory):
    """A copy of the demo run with a Q8_0 GGUF and no Q4_K_M one."""
    from wrapper.core import manifest

    from tests.support.runner import copy_run

    run = copy_run(demo_run, tmp_path_factory.mktemp("q8") / "runs")
    run_ftw(run.parent, "gguf", "--run", RUN, "--quant", "Q8_0", "--keep-intermediates")
    data = manifest.load(run)
    (run / "gguf" / f"{RUN}-Q4_K_M.gguf").unlink()
    del data["artifacts"]["gguf_q4_k_m"]
    manifest.save(run, data)
    return run


def test_a_q8_0_only_run_is_evaluated_on_its_q8_0(q8_only):
    runs_dir = q8_only.parent
    asked = run_ftw(runs_dir, "eval", "--run", RUN, "--quant", "q8_0", "--limit", "1", "--val-sample", "1")
    result = json.loads((q8_only / "eval.json").read_text(encoding="utf-8"))
    assert result["gguf_quants"] == ["Q8_0"] and result["models"]["gguf:Q8_0"].endswith(f"{RUN}-Q8_0.gguf")
    assert result["aggregate"]["control"]["gguf:Q8_0"]["rows"] == 1
    assert result["quantization"]["perplexity"]["Q8_0"]["perplexity"] >= 1.0
    assert "Q8_0 GGUF" in asked.stdout and "Q4_K_M" not in (q8_only / "report.md").read_text(encoding="utf-8")
    # without --quant: every quantized GGUF the run has, here its one; a quant it lacks: exit 2 with the command
    from wrapper.eval.evaluate import choose_quants

    assert choose_quants(q8_only) == {"Q8_0": q8_only / "gguf" / f"{RUN}-Q8_0.gguf"}
    missing = run_ftw(runs_dir, "eval", "--run", RUN, "--quant", "Q5_K_M", check=False)
    assert missing.returncode == 2 and "ftw gguf --run e2e --quant Q5_K_M" in missing.stdout + missing.stderr
