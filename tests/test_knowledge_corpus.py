"""The fictional corpus of the knowledge benchmark (data/knowledge/, bench/knowledge.py): its facts are
well formed, each is in its document, the unseen documents share nothing with the trained ones, and
`ftw data prepare` splits it without a probe reaching training."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from test_data import jsonl, write_recipe

from tests.support.runner import REPO, ftw_in_process

CORPUS = REPO / "data" / "knowledge"
FILES = ("trained", "unseen")
MIN_PHRASINGS = 10


def rows_of(name: str) -> list[dict]:
    return jsonl(CORPUS / f"{name}.jsonl")


def question(row: dict) -> str:
    return row["messages"][0]["content"]


def answer(row: dict) -> str:
    return row["messages"][-1]["content"]


def documents(rows: list[dict]) -> dict[str, str]:
    """chunk -> the document's text (its document row's answer)."""
    return {row["chunk"]: answer(row) for row in rows if "fact" not in row}


def facts(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if "fact" in row:
            grouped[row["fact"]].append(row)
    return grouped


def mentions(text: str, value: str) -> bool:
    """`value` stands in `text` as a whole (1611 does not mention 11)."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


@pytest.mark.parametrize("name", FILES)
def test_every_fact_has_its_phrasings_one_answer_and_is_in_its_document(name):
    rows = rows_of(name)
    docs = documents(rows)
    assert all(isinstance(row.get("chunk"), str) and row["chunk"] for row in rows)
    assert Counter(row["chunk"] for row in rows if "fact" not in row).most_common(1)[0][1] == 1  # one text each
    for fact, phrasings in facts(rows).items():
        assert len(phrasings) >= MIN_PHRASINGS, fact
        assert len({question(r) for r in phrasings}) == len(phrasings), f"{fact}: a phrasing repeats"
        assert len({answer(r) for r in phrasings}) == 1, f"{fact}: one short answer"
        assert len({(r["chunk"], r["lang"]) for r in phrasings}) == 1, f"{fact}: one document, one language"
        chunk, reference = phrasings[0]["chunk"], answer(phrasings[0])
        assert chunk in docs, f"{fact}: its document {chunk} has no document row"
        assert reference in docs[chunk], f"{fact}: the answer {reference!r} is not in {chunk}"
        assert not [question(r) for r in phrasings if mentions(question(r), reference)], f"{fact}: a question says it"


def test_ids_are_unique_and_the_unseen_documents_share_nothing_with_the_trained():
    trained, unseen = rows_of("trained"), rows_of("unseen")
    every = trained + unseen
    assert len({json.dumps(r, sort_keys=True) for r in every}) == len(every)
    assert len({question(r) for r in every}) == len(every), "a question is asked twice"
    assert {r["chunk"] for r in trained}.isdisjoint(r["chunk"] for r in unseen)
    assert set(facts(trained)).isdisjoint(facts(unseen))
    # no unseen fact's answer is given away by anything that trains
    trained_text = "\n".join(question(r) + "\n" + answer(r) for r in trained)
    assert not [a for a in {answer(r) for r in unseen if "fact" in r} if mentions(trained_text, a)]
    answers = Counter(answer(rows[0]) for rows in {**facts(trained), **facts(unseen)}.values())
    assert answers.most_common(1)[0][1] == 1, "two facts share an answer: multiple choice could not tell them apart"


def test_the_corpus_is_sized_and_spread_over_three_languages():
    trained, unseen = facts(rows_of("trained")), facts(rows_of("unseen"))
    assert 40 <= len(trained) + len(unseen) <= 60
    assert len(documents(rows_of("unseen"))) == 2
    langs = Counter(rows[0]["lang"] for rows in trained.values())
    assert set(langs) == {"en", "ru", "kk"} and min(langs.values()) >= 8


def test_prepare_splits_the_corpus_and_no_probe_trains(runs_dir, tmp_path):
    recipe = write_recipe(tmp_path, "data:\n  probes_per_fact: 2\n  unseen_share: 0.3\n")
    args = ["data", "prepare", "--recipe", str(recipe), "--run", "kb"]
    for name in FILES:
        args += ["--data", str(CORPUS / f"{name}.jsonl")]
    code, out = ftw_in_process(*args)
    assert code == 0, out
    data = runs_dir / "kb" / "data"
    train, probes, unseen = (jsonl(data / f"{name}.jsonl") for name in ("train", "probes", "unseen"))
    info = json.loads((data / "prepared.json").read_text(encoding="utf-8"))["knowledge"]
    assert info["facts"] == len(facts(rows_of("trained"))) + len(facts(rows_of("unseen")))
    assert info["facts_not_probed"] == 0 and len(probes) == 2 * info["facts_probed"]
    trained_texts = {json.dumps(r["conversations"], ensure_ascii=False) for r in train}
    assert trained_texts.isdisjoint(json.dumps(r["conversations"], ensure_ascii=False) for r in probes + unseen)
    assert {r["chunk"] for r in unseen}.isdisjoint(r["chunk"] for r in train)
    assert Path(data / "train.jsonl").stat().st_size > 0
