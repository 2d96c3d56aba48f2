"""bench/knowledge.py's pure parts: the probes are held out first and are the same for every
configuration, each configuration trains the nested first k phrasings of each fact, and the epochs
keep the exposures per fact equal. (The benchmark itself trains six models: the lead runs it.)"""

from __future__ import annotations

import pytest

from tests.support.bench import bench_script

knowledge = bench_script("knowledge")

CORPUS = knowledge.read_rows(knowledge.CORPUS / "trained.jsonl")


def questions(rows: list[dict]) -> set[str]:
    return {row["messages"][0]["content"] for row in rows}


def test_probes_are_fixed_and_each_configuration_trains_k_other_phrasings_per_fact():
    facts = knowledge.phrasings_by_fact(CORPUS)
    documents = [row for row in CORPUS if not row.get("fact")]
    probes, pool = knowledge.split_probes(facts, 4, seed=42)
    assert knowledge.split_probes(facts, 4, seed=42) == (probes, pool)
    assert len(probes) == 4 * len(facts) and set(pool) == set(facts)
    trained: dict[tuple[int, bool], list[dict]] = {}
    for config in knowledge.configs([1, 3, 6], [True, False], exposures=24):
        rows = knowledge.training_rows(pool, documents, config)
        trained[config.phrasings, config.docs] = rows
        assert questions(rows).isdisjoint(questions(probes))
        per_fact = {fact: sum(row.get("fact") == fact for row in rows) for fact in facts}
        assert set(per_fact.values()) == {config.phrasings}
        assert config.phrasings * config.epochs == 24  # equal exposures per fact
        assert (len(rows) - len(documents) * config.docs) == config.phrasings * len(facts)
    # nested: the one phrasing trained is among the three, the three among the six
    assert questions(trained[1, False]) < questions(trained[3, False]) < questions(trained[6, False])
    assert questions(trained[6, True]) - questions(trained[6, False]) == questions(documents)


def test_exposures_that_do_not_divide_are_refused():
    with pytest.raises(SystemExit, match="not a multiple"):
        knowledge.epochs_for(20, 3)
