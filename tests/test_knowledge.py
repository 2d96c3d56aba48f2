"""Rows grouped by `fact`: `ftw data prepare`'s knowledge split (wrapper/data/knowledge.py).

Probes (held-out phrasings of trained facts) and unseen chunks (held out whole) never reach
training, by text or by id; rows of one fact are spread apart, so that LLaMA-Factory's packing,
run here for real, never puts two of them in one sequence; a bad `fact` is refused with its line.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from test_data import DEMO_MODEL, SAMPLES, jsonl, write_recipe

from wrapper.config.recipes import load_recipe
from wrapper.core.errors import FtwError
from wrapper.data.formats import near_key
from wrapper.data.knowledge import spread
from wrapper.data.prepare import prepare

from tests.support.runner import REPO, ftw_in_process


def question(fact: int, phrasing: int) -> str:
    return f"Phrasing {phrasing} of fact {fact}: what does record {fact} hold?"


def synth_rows(facts: int = 24, phrasings: int = 5, facts_per_chunk: int = 2) -> list[dict]:
    """Rows as `ftw data synth` writes them for facts: each chunk's questions (phrasings of its facts)
    and one document row (the chunk's text), with the chunk's length in chunk_tokens."""
    rows = []
    for fact in range(facts):
        chunk = f"doc:{fact // facts_per_chunk}"
        for phrasing in range(phrasings):
            rows.append(
                {
                    "conversations": [
                        {"from": "human", "value": question(fact, phrasing)},
                        {"from": "gpt", "value": f"Record {fact} holds the number {fact * 37 + 11}."},
                    ],
                    "fact": f"fact-{fact}",
                    "chunk": chunk,
                    "chunk_tokens": 40,
                    "source": f"book.pdf:{fact // facts_per_chunk + 1}",
                    "lang": "en",
                }
            )
    for chunk in range(facts // facts_per_chunk):
        rows.append(
            {
                "conversations": [
                    {"from": "human", "value": f"Recite passage {chunk} of the book."},
                    {"from": "gpt", "value": f"Passage {chunk} lists records {2 * chunk} and {2 * chunk + 1}."},
                ],
                "chunk": f"doc:{chunk}",
                "chunk_tokens": 40,
                "source": f"book.pdf:{chunk + 1}",
                "lang": "en",
            }
        )
    random.Random(0).shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def text_of(row: dict) -> str:
    return "\n".join(turn["value"] for turn in row["conversations"])


def prepared(runs_dir: Path, run: str) -> tuple[dict, dict[str, list[dict]]]:
    data = runs_dir / run / "data"
    info = json.loads((data / "prepared.json").read_text(encoding="utf-8"))
    files = {name: jsonl(data / f"{name}.jsonl") for name in ("train", "probes", "unseen", "rejects")}
    return info, files


def test_probes_and_unseen_chunks_never_reach_training(capsys, runs_dir, tmp_path):
    rows = synth_rows()
    # a fact with too few phrasings to spare two: all of it trains, counted "not probed"
    rows += [
        {"instruction": f"Short fact, phrasing {n}?", "output": "The short fact.", "fact": "short"} for n in range(2)
    ]
    rows.append({"instruction": "Hello?", "output": "Hello, traveller."})  # neither key: trains
    data = write_jsonl(tmp_path / "facts.jsonl", rows)
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo", "--data", str(data), "--run", "k")
    assert code == 0, out
    assert "knowledge split" in out and "val_ratio is not used" in out
    info, files = prepared(runs_dir, "k")
    train, probes, unseen = files["train"], files["probes"], files["unseen"]
    assert not (runs_dir / "k" / "data" / "val.jsonl").exists()

    # nothing lost: every row read is in exactly one file
    counts = info["counts"]
    assert counts["read"] == len(rows) == len(train) + len(probes) + len(unseen) + len(files["rejects"])
    assert (counts["train"], counts["probes"], counts["unseen"], counts["val"]) == (
        len(train),
        len(probes),
        len(unseen),
        0,
    )

    # by id: a probe's row, an unseen chunk and an unseen fact never train
    assert {r["source"] for r in train}.isdisjoint(r["source"] for r in probes + unseen)
    assert {r["chunk"] for r in unseen}.isdisjoint(r.get("chunk") for r in train + probes)
    assert {r["fact"] for r in unseen if "fact" in r}.isdisjoint(r.get("fact") for r in train + probes)
    # by text: no probe's question and no unseen chunk's row (questions, its text) is a training row's text
    trained_texts = {text_of(r) for r in train}
    assert trained_texts.isdisjoint(text_of(r) for r in probes + unseen)
    assert all(r["conversations"][0]["value"] not in trained_texts for r in probes)

    # every trained fact keeps phrasings in training; each probed one gives exactly probes_per_fact
    knowledge = info["knowledge"]
    per_fact = {}
    for row in probes:
        per_fact[row["fact"]] = per_fact.get(row["fact"], 0) + 1
    assert set(per_fact.values()) == {2} and "short" not in per_fact
    assert {r["fact"] for r in probes} <= {r.get("fact") for r in train}
    assert sum(1 for r in train if r.get("fact") == "short") == 2
    assert knowledge["facts"] == 25 and knowledge["facts_not_probed"] == 1
    assert knowledge["facts_probed"] == len(per_fact) == len(probes) // 2
    assert knowledge["trained_phrasings_per_fact"] == {"min": 2, "median": 3}
    # unseen: the nearest whole number to 10% of the 13 chunks (12 of the book, the short fact's own)
    assert knowledge["units"] == 13 and knowledge["unseen_units"] == 1 == knowledge["unseen_chunks"]
    assert knowledge["unseen_rows"] == len(unseen) == 2 * 5 + 1  # its two facts' questions and its text
    assert knowledge["document_rows"] == 11 and knowledge["other_rows"] == 1
    source = 11 * 40  # the trained chunks' own text
    assert knowledge["source_tokens"] == source
    assert knowledge["synthetic_to_source"] == round(knowledge["synthetic_tokens"] / source, 2) > 1
    assert f"synthetic/source tokens: {knowledge['synthetic_to_source']:g}" in out

    # order: no two rows of one fact next to each other; the recorded spacing is the real one
    facts = [r.get("fact") for r in train]
    assert all(a is None or a != b for a, b in zip(facts, facts[1:]))
    gaps = [j - i for i in range(len(facts)) for j in range(i + 1, len(facts)) if facts[i] and facts[i] == facts[j]]
    probe_facts = [r["fact"] for r in probes]
    gaps += [
        j - i
        for i in range(len(probe_facts))
        for j in range(i + 1, len(probe_facts))
        if probe_facts[i] == probe_facts[j]
    ]
    assert knowledge["spacing"] == min(gaps) > 1

    # the same data and seed split the same way
    code, _ = ftw_in_process("data", "prepare", "--recipe", "demo", "--data", str(data), "--run", "again")
    assert code == 0
    assert prepared(runs_dir, "again")[1]["train"] == train


def test_chunks_that_share_a_fact_are_held_out_together(runs_dir, tmp_path):
    rows = synth_rows(facts=40, facts_per_chunk=1)
    for row in rows:  # fact 0 was also phrased from chunk 1's text
        if row.get("fact") == "fact-0" and "Phrasing 4" in row["conversations"][0]["value"]:
            row["chunk"] = "doc:1"
    recipe = write_recipe(tmp_path, "data:\n  unseen_share: 0.5\n")
    prepare(str(recipe), [str(write_jsonl(tmp_path / "f.jsonl", rows))], "joined")
    info, files = prepared(runs_dir, "joined")
    held = {r["chunk"] for r in files["unseen"]}
    trained = {r["chunk"] for r in files["train"] + files["probes"]}
    assert held.isdisjoint(trained) and len(held) + len(trained) == 40
    assert ("doc:0" in held) == ("doc:1" in held)
    assert info["knowledge"]["units"] == 39


def test_the_demo_keeps_what_its_checks_ask_in_training_and_probes_the_rest(runs_dir):
    """The demo's lore carries `fact`; `ftw smoke` asks the recipe's checks of the GGUF, so those rows train
    and their facts are never held out whole, whatever the seed draws."""
    checks = [near_key(check.prompt) for check in load_recipe("demo").checks]
    for seed in range(6):
        run = f"demo{seed}"
        code, out = ftw_in_process("data", "prepare", "--recipe", "demo", "--run", run, "--set", f"data.seed={seed}")
        assert code == 0, out
        info, files = prepared(runs_dir, run)
        trained = {near_key(row["conversations"][0]["value"]) for row in files["train"]}
        held = [near_key(row["conversations"][0]["value"]) for row in files["probes"] + files["unseen"]]
        assert set(checks) <= trained and not set(checks) & set(held)
        assert info["knowledge"]["pinned_rows"] == len(checks) == 4
        assert info["knowledge"]["facts_probed"] >= 5 and info["counts"]["unseen"] == 5  # one fact of six
    assert "4 row(s) ask what the recipe's checks ask: trained" in " ".join(out.split())


def test_rows_without_fact_prepare_as_before(runs_dir):
    info = prepare("demo", [str(SAMPLES / "alpaca.jsonl"), str(SAMPLES / "sharegpt.jsonl")], "old").info
    data = runs_dir / "old" / "data"
    assert info["knowledge"] is None and set(info["files"]) == {"train", "val", "rejects"}
    assert not (data / "probes.jsonl").exists() and not (data / "unseen.jsonl").exists()
    assert info["counts"]["probes"] == info["counts"]["unseen"] == 0
    assert all("fact" not in row for row in jsonl(data / "train.jsonl"))


@pytest.mark.parametrize(
    "row, line, words",
    [
        ({"instruction": "Q?", "output": "A.", "fact": 3}, 2, "field 'fact' must be a string (an id shared by"),
        ({"instruction": "Q?", "output": "A.", "fact": ["a"]}, 2, "field 'fact' must be a string"),
        ({"instruction": "Q?", "output": "A.", "fact": " "}, 2, "empty field 'fact'"),
        ({"instruction": "Q?", "output": "A.", "chunk": 7}, 2, "field 'chunk' must be a string"),
        ({"text": "Some raw text.", "fact": "f"}, 1, "field 'fact' on a raw-text row"),
    ],
)
def test_a_fact_that_is_not_an_id_is_refused_with_its_line(capsys, runs_dir, tmp_path, row, line, words):
    good = {"instruction": "Fine?", "output": "Fine.", "fact": "f"}
    rows = [row] if "text" in row else [good, row, good | {"instruction": "Also fine?"}]
    data = write_jsonl(tmp_path / "mine.jsonl", rows)
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo", "--data", str(data), "--run", "bad")
    assert code == 2, out
    assert re.search(rf"mine\.jsonl:{line}: {re.escape(words)}", out), out
    assert "Nothing was prepared" in out and "ftw data check" in out
    assert not (runs_dir / "bad" / "data").exists()
    # `ftw data check` lists it as an invalid row, with the same line
    code, out = ftw_in_process("data", "check", str(data))
    assert code == 1 and re.search(rf"mine\.jsonl:{line}: {re.escape(words)}", out), out


def test_a_chunk_length_that_is_not_a_number_is_refused(runs_dir, tmp_path):
    rows = synth_rows(facts=4)
    rows[2]["chunk_tokens"] = "forty"
    with pytest.raises(FtwError, match=r"f\.jsonl:3: field 'chunk_tokens' must be a whole number of tokens"):
        prepare("demo", [str(write_jsonl(tmp_path / "f.jsonl", rows))], "tokens")
    assert not (runs_dir / "tokens" / "data").exists()


def test_spread_parts_neighbours_and_counts_the_ones_left():
    rng = random.Random(1)
    facts = [0] * 4 + [1] * 4 + [2] * 4 + [-1] * 3
    order, spacing, left = spread(facts, rng)
    laid = [facts[i] for i in order]
    assert sorted(order) == list(range(len(facts))) and left == 0
    assert all(a == -1 or a != b for a, b in zip(laid, laid[1:])) and spacing >= 2
    # one fact holding over half the rows can't be kept apart everywhere: the pairs left are counted
    facts = [0] * 6 + [1] * 2
    order, spacing, left = spread(facts, rng)
    laid = [facts[i] for i in order]
    assert left == sum(1 for a, b in zip(laid, laid[1:]) if a == b) >= 3 and spacing == 1  # 3: six in 3 runs


@pytest.mark.parametrize(
    "section, message",
    [
        ("data:\n  probes_per_fact: -1\n", r"mine.yaml:8 \(key 'data.probes_per_fact'\): probes_per_fact is a number"),
        ("data:\n  unseen_share: 1\n", r"mine.yaml:8 \(key 'data.unseen_share'\): unseen_share is a share"),
    ],
)
def test_knowledge_settings_errors_name_file_and_line(tmp_path, section, message):
    with pytest.raises(FtwError, match=message):
        load_recipe(str(write_recipe(tmp_path, section)))


def test_probes_off_and_no_unseen_train_everything_else(runs_dir, tmp_path):
    recipe = write_recipe(tmp_path, "data:\n  probes_per_fact: 0\n  unseen_share: 0\n")
    rows = synth_rows(facts=6)
    info = prepare(str(recipe), [str(write_jsonl(tmp_path / "f.jsonl", rows))], "all").info
    assert info["counts"]["train"] == len(rows) and set(info["files"]) == {"train", "rejects"}
    assert info["knowledge"]["facts_not_probed"] == 6 and info["knowledge"]["probes"] == 0


def test_plan_prints_exposures_per_fact_and_warns_under_five_phrasings(capsys, tmp_path):
    rows = [
        {"instruction": question(f, p), "output": f"Answer {f}.", "fact": f"f{f}"} for f in range(3) for p in range(3)
    ]
    rows += [{"instruction": question(9, p), "output": "Answer 9.", "fact": "f9"} for p in range(6)]
    data = write_jsonl(tmp_path / "few.jsonl", rows)
    code, out = ftw_in_process(
        "plan", "--recipe", "demo", "--profile", "cpu", "--data", str(data), "--set", "num_train_epochs=2"
    )
    assert code == 0, out
    assert "facts: 4, 3 to median 3 phrasings each in training x 2 epochs = 6 to 6 exposures per fact" in out
    assert "note: 3 of 4 facts train on fewer than 5 phrasings (min 3, median 3" in out
    code, out = ftw_in_process("plan", "--recipe", "demo", "--profile", "cpu")  # the demo: 5 phrasings per fact
    assert code == 0 and "facts: 6, 5 to median 5 phrasings" in out and "fewer than 5 phrasings" not in out


LOAD_AS_LLAMAFACTORY_DOES = """
import json, sys
import yaml
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
with open(sys.argv[1], encoding="utf-8") as handle:
    rendered = yaml.safe_load(handle)
for number, changes in enumerate(json.loads(sys.argv[3])):
    args = {**rendered, "output_dir": f"{sys.argv[2]}/{number}", **changes}
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer)
    decode = tokenizer["tokenizer"].decode
    sets = ("train_dataset", "eval_dataset")
    print("PACKED", json.dumps({name: [decode(ids) for ids in module[name]["input_ids"]] for name in sets}))
"""


def packed_sequences(train_yaml: Path, out: Path, *changes: dict) -> list[dict[str, list[list[int]]]]:
    """The facts in each sequence LLaMA-Factory packs from the rendered train.yaml (its own loader), once
    per set of changes to it; the base itself is loaded (the run's float32 copy is made by `ftw train`)."""
    import os
    import subprocess
    import sys

    changes = tuple({"model_name_or_path": str(DEMO_MODEL), **change} for change in changes)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AS_LLAMAFACTORY_DOES, str(train_yaml), str(out), json.dumps(changes)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_DATASETS_OFFLINE="1"),
        encoding="utf-8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.removeprefix("PACKED ") for line in result.stdout.splitlines() if line.startswith("PACKED ")]
    found = [json.loads(line) for line in lines]
    assert len(found) == len(changes), result.stdout[-3000:]
    return [
        {name: [[int(f) for f in re.findall(r"of fact (\d+):", text)] for text in seqs] for name, seqs in one.items()}
        for one in found
    ]


@pytest.mark.slow  # LLaMA-Factory's loader in a child process: ~30 s
def test_packing_never_puts_two_rows_of_a_fact_in_one_sequence(capsys, runs_dir, tmp_path):
    """LLaMA-Factory fills a packed sequence from a preprocessing batch sorted by length: with its default batch
    of 1000 rows, phrasings of one fact do share sequences; render's batch (the prepared spacing) keeps them apart."""
    data = write_jsonl(tmp_path / "facts.jsonl", synth_rows(facts=40, phrasings=6))
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo", "--data", str(data), "--run", "packed")
    assert code == 0, out
    code, out = ftw_in_process(
        "render", "--recipe", "demo", "--profile", "cpu", "--run", "packed", "--set", "packing=true"
    )
    assert code == 0, out
    train_yaml = runs_dir / "packed" / "train.yaml"
    args = yaml.safe_load(train_yaml.read_text(encoding="utf-8"))
    spacing = json.loads((runs_dir / "packed" / "data" / "prepared.json").read_text(encoding="utf-8"))["knowledge"][
        "spacing"
    ]
    assert args["packing"] is True and args["preprocessing_batch_size"] == spacing < 1000
    assert args["eval_dataset"] == "ftw_probes"
    # as rendered, and with LLaMA-Factory's own batch of 1000 rows
    packed, mixed = packed_sequences(train_yaml, tmp_path / "out", {}, {"preprocessing_batch_size": 1000})
    for name in ("train_dataset", "eval_dataset"):
        assert any(len(seq) > 1 for seq in packed[name]), "nothing was packed"
        assert all(len(seq) == len(set(seq)) for seq in packed[name]), name
    assert sum(map(len, packed["train_dataset"])) == 36 * 4  # the 4 trained phrasings of every fact not unseen
    # without the cap they do meet: the cap is what keeps them apart
    assert any(len(seq) != len(set(seq)) for seq in mixed["train_dataset"])


def test_the_demo_lore_groups_its_phrasings_by_fact():
    rows = json.loads((REPO / "data" / "demo_lore.json").read_text(encoding="utf-8"))
    by_fact: dict[str, set[str]] = {}
    for row in rows:
        by_fact.setdefault(row["fact"], set()).add(row["output"])
    assert len(by_fact) == 6 and all(len(answers) == 1 for answers in by_fact.values())
