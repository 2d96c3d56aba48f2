"""`ftw eval`'s "does it know the documents?" (wrapper/eval/knowledge.py): the knowledge sets read from a
run's prepared data, the answers graded by the reference's key words, abstentions in en, ru and kk, and
the section in eval.json, which an eval.json without it still loads around."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data import DEMO_MODEL
from test_eval_tables import a_result

from wrapper.commands.eval_tables import print_report
from wrapper.core.eval_result import EvalResult, KnowledgeResult, Score
from wrapper.core.journal import Journal
from wrapper.core.ui import console
from wrapper.eval import knowledge, plots, render
from wrapper.eval.evaluate import judge_answers
from wrapper.eval.knowledge import abstained, answer_budget, grade, key_match, load_knowledge, wilson
from wrapper.eval.sets import Item
from wrapper.eval.tables import (
    KNOWLEDGE_GROUPS_TITLE,
    KNOWLEDGE_TITLE,
    MC_LABEL,
    OPEN_BOOK_LABEL,
    RECOVERY_LABEL,
    report_of,
)
from wrapper.prompts.training_format import training_format
from wrapper.runtime.models import HfModel
from wrapper.synth.teachers import open_teacher

from tests.support.teacher import StubModel, serving

GATE = "The Amber Gate of Veloria is guarded by the knight Orlen Vask."
DRAGON = "Дракона Северных гор зовут Мирогаст."


def sharegpt(question: str, answer: str, **keys) -> str:
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return json.dumps({"conversations": turns, **keys}, ensure_ascii=False)


def prepared(run_dir: Path, probes: bool = True) -> Path:
    data = run_dir / "data"
    data.mkdir(parents=True)
    train = [sharegpt(f"Who guards the gate, take {n}?", GATE, fact="gate", lang="en") for n in range(5)]
    train.append(sharegpt("Hello?", "Hi."))  # a row of no fact is not a knowledge question
    (data / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    if probes:
        probe = sharegpt("Кто живёт в Северных горах?", DRAGON, fact="dragon", lang="ru", source="lore.json:12")
        (data / "probes.jsonl").write_text(probe + "\n", encoding="utf-8")
    return data


def test_the_sets_come_from_the_prepared_data_and_none_without_facts(tmp_path):
    prepared(tmp_path / "facts")
    sets = load_knowledge(tmp_path / "facts", seen_sample=3, seed=7)
    assert [len(sets.items[name]) for name in ("seen", "probes", "unseen")] == [3, 1, 0]
    assert sets.sources["seen"]["of"] == 5 and sets.sources["unseen"] == {
        "file": str(tmp_path / "facts" / "data" / "unseen.jsonl"),
        "rows": 0,
        "of": 0,
        "seed": 7,
    }
    probe = sets.items["probes"][0]
    assert (probe.prompt, probe.reference, probe.fact, probe.lang, probe.document) == (
        "Кто живёт в Северных горах?",
        DRAGON,
        "dragon",
        "ru",
        "lore.json",
    )
    assert [i.id for i in load_knowledge(tmp_path / "facts", 3, 7).items["seen"]] == [i.id for i in sets.items["seen"]]

    prepared(tmp_path / "plain", probes=False)  # train.jsonl alone: an ordinary split, no knowledge section
    assert load_knowledge(tmp_path / "plain", 3, 7).empty


def test_an_answer_is_right_when_it_holds_the_key_words_the_question_does_not_give():
    question = "Who guards the Amber Gate of Veloria?"
    assert key_match("Orlen Vask guards it.", GATE, question)
    assert not key_match("The knight Bob guards the Amber Gate of Veloria.", GATE, question)
    assert key_match("Его зовут Мирогаст.", DRAGON, "Кто живёт в Северных горах?")
    assert key_match("Мирогаста знают все.", DRAGON, "Кто живёт в Северных горах?")  # an inflection matches
    assert not key_match("Там живёт медведь.", DRAGON, "Кто живёт в Северных горах?")
    assert not key_match("It opened in 1913.", "It opened in 1912.", "When did it open?")
    swords = "Мечи стражей Велории куют из лунной стали."  # no name beyond the question's: the content words
    assert key_match("Из лунной стали.", swords, "Из чего куют мечи стражей Велории?")
    assert not key_match("Из железа.", swords, "Из чего куют мечи стражей Велории?")


@pytest.mark.parametrize(
    "answer",
    [
        "I don't know who guards it.",
        "I’m not sure.",
        "Извините, я не знаю.",
        "Мне неизвестно, кто там живёт.",
        "Кешіріңіз, мен білмеймін.",
        "Бұл туралы ақпарат жоқ.",
    ],
)
def test_an_abstention_is_not_attempted_in_english_russian_and_kazakh(answer):
    assert abstained(answer) and grade(answer, DRAGON, "Кто живёт в Северных горах?") == "not_attempted"


def test_a_confident_invention_is_wrong_and_a_word_that_merely_contains_a_phrase_is_not_an_abstention():
    assert grade("Там живёт дракон Огнезуб.", DRAGON, "Кто живёт в Северных горах?") == "incorrect"
    assert not abstained("Там живёт дракон неизвестного цвета.")
    assert (
        grade("Не знаю точно, но его зовут Мирогаст.", DRAGON, "Кто живёт в Северных горах?") == "correct"
    )  # it did answer


def test_the_interval_is_wilsons_and_holds_at_none_and_all_right():
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == pytest.approx(1.0)
    assert wilson(0, 0) == (None, None)
    assert answer_budget(40) == 68  # a 40-token reference may take 68 new tokens


def test_the_summary_grades_each_model_and_reads_back_from_eval_json(tmp_path):
    prepared(tmp_path)
    sets = load_knowledge(tmp_path, 2, 1)
    answers = {
        "base": {
            "seen": {i.id: {"answer": "No idea."} for i in sets.items["seen"]},
            "probes": {"probes0": {"answer": "Не знаю."}},
            "unseen": {},
        },
        "gguf:Q4_K_M": {
            "seen": {i.id: {"answer": "Orlen Vask."} for i in sets.items["seen"]},
            "probes": {"probes0": {"answer": "Мирогаст."}},
            "unseen": {},
        },
    }
    result = knowledge.summarize(sets, answers, ("base", "gguf:Q4_K_M"))
    assert result.key_match["probes"]["gguf:Q4_K_M"].correct == 1
    assert result.key_match["seen"]["base"].accuracy == 0.0 and "unseen" not in result.key_match
    run = {"run": "r", "recipe": "demo", "profile": "cpu", "evaluated_at": "now", "settings": {}, "models": {}}
    EvalResult(**run, knowledge=result).save(tmp_path)
    again = EvalResult.load(tmp_path)
    assert isinstance(again.knowledge, KnowledgeResult) and again.knowledge == result
    assert isinstance(again.knowledge.key_match["probes"]["base"], Score)
    EvalResult(**run).save(tmp_path)  # without facts: no key in eval.json, None when read
    assert (
        "knowledge" not in json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
        and EvalResult.load(tmp_path).knowledge is None
    )


def test_unseen_counts_right_wrong_and_abstained():
    score = knowledge.score_of(["correct", "incorrect", "incorrect", "not_attempted"], three_way=True)
    assert (score.n, score.correct, score.incorrect, score.not_attempted) == (4, 1, 2, 1)
    assert score.confident_wrong == 0.5


def a_result_with_knowledge() -> EvalResult:
    result = a_result()
    scores = {
        "seen": {"base": knowledge.score_of(["incorrect"] * 4), "gguf:Q4_K_M": knowledge.score_of(["correct"] * 4)},
        "probes": {
            "base": knowledge.score_of(["correct"] + ["incorrect"] * 9),
            "gguf:Q4_K_M": knowledge.score_of(["correct"] * 7 + ["incorrect"] * 3),
        },
        "unseen": {
            kind: knowledge.score_of(["incorrect", "incorrect", "not_attempted", "correct"], three_way=True)
            for kind in ("base", "gguf:Q4_K_M")
        },
    }
    sets = {name: {"file": f"/runs/tiny/data/{name}.jsonl", "rows": 4, "of": 4, "seed": 42} for name in scores}
    picks = {"base": knowledge.score_of(["correct", "incorrect"]), "gguf:Q4_K_M": knowledge.score_of(["correct"] * 2)}
    result.knowledge = KnowledgeResult(
        sets=sets,
        key_match=scores,
        multiple_choice=picks,
        open_book=knowledge.score_of(["correct"] * 9 + ["incorrect"]),
        recovery={"gguf:Q4_K_M": 0.75},
        judged={"probes": scores["probes"]},
        judge="endpoint http://judge model j",
        by_language={"probes": {"en": scores["seen"], "ru": scores["probes"]}},
        notes=["how it was graded"],
    )
    return result


def test_the_knowledge_table_and_its_headline_read_the_same_in_markdown_html_and_the_terminal():
    result = a_result_with_knowledge()
    report = report_of(result)
    table = report.tables[0]
    assert table.title == KNOWLEDGE_TITLE and table.header == ["set", "base", "Q4_K_M GGUF"]
    assert table.rows[1] == ["PROBES: held-out phrasings", "1/10 10% (2%–40%)", "7/10 70% (40%–89%)"]
    assert table.rows[2] == [MC_LABEL, "1/2 50% (9%–91%)", "2/2 100% (34%–100%)"]
    assert table.rows[3] == [OPEN_BOOK_LABEL, "9/10 90% (60%–98%)", "—"]
    assert table.rows[4] == [RECOVERY_LABEL, "—", "0.75"]
    assert table.rows[5] == ["PROBES: right by the judge", "1/10 10% (2%–40%)", "7/10 70% (40%–89%)"]
    assert table.rows[7] == ["UNSEEN: confident-wrong", "2/4 50%", "2/4 50%"]
    headline = "Held-out phrasings: base 10% → Q4_K_M GGUF 70% (n=10)."
    assert table.notes[0] == headline

    groups = report.tables[1]
    assert groups.title == KNOWLEDGE_GROUPS_TITLE and groups.rows == [
        ["PROBES by language", "en", "0/4 0% (0%–49%)", "4/4 100% (51%–100%)"],
        ["", "ru", "1/10 10% (2%–40%)", "7/10 70% (40%–89%)"],
    ]
    md = render.markdown(report, [], "report")
    assert f"## {KNOWLEDGE_TITLE}" in md and "| PROBES: held-out phrasings | 1/10 10% (2%–40%) |" in md
    page = render.html(report, {})
    assert "<td>UNSEEN: abstained</td>" in page and headline in page
    with console.capture() as captured:
        print_report(report)
    assert headline in captured.get() and "how it was graded" not in captured.get()

    assert plots.plot_knowledge(result).startswith(b"\x89PNG")
    assert plots.plot_knowledge(a_result()) is None and report_of(a_result()).tables[0].title != KNOWLEDGE_TITLE


def a_fact(fact: str, question: str, answer: str, lang: str = "en") -> Item:
    return Item("probes", fact, [{"role": "user", "content": question}], answer, lang=lang, fact=fact)


def test_the_options_are_the_reference_and_answers_to_other_facts_of_the_same_kind():
    answers = {
        "france": a_fact("france", "What is the capital of France?", "The capital of France is Paris."),
        **{
            country: a_fact(country, f"What is the capital of {country}?", f"The capital of {country} is {city}.")
            for country, city in (("spain", "Madrid"), ("italy", "Rome"), ("germany", "Berlin"))
        },
        "who": a_fact("who", "Who wrote it?", "Tolstoy wrote it."),  # another question word: a last resort
        "ru": a_fact("ru", "Какая столица России?", "Столица России — Москва.", "ru"),  # another language
    }
    item = answers["france"]
    choices = knowledge.choices_of(item, answers, seed=1)
    assert choices is not None and choices.options[choices.answer] == item.reference
    # the reference's sentence with another fact's key in its place: only the asked-for name differs
    cities = ("Paris", "Madrid", "Rome", "Berlin")
    assert sorted(choices.options) == sorted(f"The capital of France is {city}." for city in cities)
    assert knowledge.choices_of(item, answers, seed=1) == choices  # seeded
    assert knowledge.choices_of(item, {"france": item, "who": answers["who"]}, seed=1) is None  # too few facts


def test_distractors_swap_a_key_of_the_same_kind_numbers_for_numbers_names_for_names():
    dates = {
        fact: a_fact(fact, question, answer)
        for fact, question, answer in (
            ("charter", "When was the Charter of Kelmora sealed?", "The charter was sealed on 14 March 1502."),
            ("guild", "When was the Saltwright Guild founded?", "1534"),
            ("tithe", "How much was the yearly tithe?", "7 silver marks"),
            ("bridge", "When did the bridge fall?", "It fell in 1611, in the great flood."),
            ("warden", "Who was the first Warden?", "Maren Tolvey"),
        )
    }
    choices = knowledge.choices_of(dates["charter"], dates, seed=3)
    assert choices is not None
    assert sorted(choices.options) == sorted(
        f"The charter was sealed on {key}." for key in ("14 March 1502", "1534", "7", "1611")
    )
    assert [s.kind for s in knowledge.key_spans("The knight Orlen Vask, in 1204.", "Who guards it?")] == [
        "name",
        "number",
    ]
    # a capitalised first word is the sentence's start, unless it is all there is
    said = "Дракона Северных гор зовут Мирогаст."
    start = said.index("Мирогаст")
    assert knowledge.key_spans(said, "Как зовут дракона Северных гор?") == [knowledge.KeySpan(start, start + 8, "name")]
    assert knowledge.key_spans("Odran Pell", "Who settled Kelmora?") == [knowledge.KeySpan(0, 10, "name")]


def test_the_likeliest_option_is_the_least_mean_loss_per_token_not_the_shortest():
    assert knowledge.pick([(12.0, 9), (2.8, 9), (13.0, 9), (11.0, 9)]) == 1
    assert knowledge.pick([(3.0, 2), (6.0, 12), (9.0, 3)]) == 1  # the longest option, likeliest per token


@pytest.mark.slow
def test_a_real_model_picks_the_known_answer_by_log_likelihood_in_english_and_russian():
    """SmolLM2-135M (the demo's base, offline) knows the capitals: the scorer must pick them."""
    model = HfModel(DEMO_MODEL)
    fmt = training_format(DEMO_MODEL, "smollm2", None)
    for question, options, right in (
        ("What is the capital of France?", ["Berlin", "Paris", "Madrid", "Rome"], 1),
        ("Какая столица России?", ["Лондон", "Париж", "Берлин", "Москва"], 3),
    ):
        head = "The capital of France is" if question.startswith("What") else "Столица России —"
        turns = [{"role": "user", "content": question}]
        nlls = [model.answer_nll(*fmt.encode_answer(turns, f"{head} {city}.")) for city in options]
        assert knowledge.pick(nlls) == right


def test_open_book_asks_the_base_with_the_chunk_and_recovery_is_the_share_of_its_gain(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    text = "The Amber Gate is guarded by the knight Orlen Vask, who never sleeps."
    train = [
        sharegpt("Recite gate.txt:1.", text, chunk="gate:1", source="gate.txt:1"),  # the chunk's document row
        sharegpt("Who guards the gate?", GATE, fact="gate", chunk="gate:1", lang="en"),
    ]
    (data / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    probe = sharegpt("Who keeps the Amber Gate of Veloria?", GATE, fact="gate", chunk="gate:1", lang="en")
    (data / "probes.jsonl").write_text(probe + "\n", encoding="utf-8")
    sets = load_knowledge(tmp_path, 5, 1)
    [asked] = sets.open_book
    assert asked.set == "open_book" and asked.id == "probes0" and asked.prompt.startswith(text)
    assert asked.prompt.endswith("Who keeps the Amber Gate of Veloria?") and asked.reference == GATE

    answers = {
        "base": {"seen": {"seen0": {"answer": "?"}}, "probes": {"probes0": {"answer": "?"}}},
        "gguf:Q4_K_M": {"seen": {"seen0": {"answer": "Orlen Vask."}}, "probes": {"probes0": {"answer": "Orlen Vask."}}},
    }
    answers["base"]["open_book"] = {"probes0": {"answer": "The knight Orlen Vask."}}
    result = knowledge.summarize(sets, answers, ("base", "gguf:Q4_K_M"))
    assert result.open_book is not None and result.open_book.correct == 1 and result.recovery == {"gguf:Q4_K_M": 1.0}
    assert knowledge.recovery_of(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert knowledge.recovery_of(0.5, 0.2, 0.2) is None  # the chunk gives the base nothing: no ratio
    assert knowledge.question_of("open_book", "probes0", sets, asked.prompt) == "Who keeps the Amber Gate of Veloria?"

    run = {"run": "r", "recipe": "demo", "profile": "cpu", "evaluated_at": "now", "settings": {}, "models": {}}
    EvalResult(**run, knowledge=result).save(tmp_path)
    assert EvalResult.load(tmp_path).knowledge == result


class Judge(StubModel):
    """A judge: right when the graded answer names Мирогаст, not attempted when it says не знаю, else wrong;
    it counts the answers it was asked about."""

    model = "judge"
    asked: list[str] = []

    def answer(self, prompt: str) -> str:
        graded = prompt.split("Answer to grade: ")[1].split("\n")[0]
        Judge.asked.append(prompt)
        verdict = "correct" if "Мирогаст" in graded else "not_attempted" if "не знаю" in graded else "incorrect"
        return json.dumps({"verdict": verdict})


def test_a_judge_grades_the_free_answers_shown_the_reference_and_its_verdicts_are_journalled(tmp_path):
    prepared(tmp_path)
    (tmp_path / "data" / "unseen.jsonl").write_text(
        sharegpt("Как зовут дракона?", DRAGON, fact="dragon2", lang="ru") + "\n", encoding="utf-8"
    )
    sets = load_knowledge(tmp_path, 1, 1)
    known = {
        "base": {"probes": {"probes0": {"answer": "Не знаю."}}, "unseen": {"unseen0": {"answer": "Огнезуб."}}},
        "gguf:Q4_K_M": {"probes": {"probes0": {"answer": "Мирогаст."}}, "unseen": {"unseen0": {"answer": "не знаю"}}},
    }
    Judge.asked = []
    with serving(Judge) as url:
        teacher = open_teacher(url, None)
        with Journal(tmp_path / "rows.jsonl", "key") as rows:
            judged = judge_answers(teacher, sets, known, rows, seed=0)
        with Journal(tmp_path / "rows.jsonl", "key") as rows:  # again: every verdict is kept, none asked twice
            assert judge_answers(teacher, sets, known, rows, seed=0) == judged
    assert len(Judge.asked) == 4 and f"Reference answer: {DRAGON}" in Judge.asked[0]
    assert judged["gguf:Q4_K_M"] == {"probes": {"probes0": "correct"}, "unseen": {"unseen0": "not_attempted"}}
    assert judged["base"]["unseen"] == {"unseen0": "incorrect"}
    answers = {
        kind: {**by_set, "seen": {i.id: {"answer": "?"} for i in sets.items["seen"]}} for kind, by_set in known.items()
    }
    result = knowledge.summarize(sets, answers, ("base", "gguf:Q4_K_M"), judged=judged, judge=teacher.id)
    assert result.judged["probes"]["gguf:Q4_K_M"].correct == 1 and result.judged["unseen"]["base"].incorrect == 1
    assert knowledge.parse_verdict('sure: {"verdict": "incorrect"}') == "incorrect"
    assert knowledge.parse_verdict("no idea") is None


def test_eval_says_why_multiple_choice_asked_fewer_probes_than_there_are():
    assert knowledge.choices_note(10, {"base": [True] * 10, "merged": [False] * 10}) == []
    (note,) = knowledge.choices_note(10, {})  # the demo: three facts per language, too few for four options
    assert note.startswith("Multiple choice asked 0 of the 10 probes") and "three other facts" in note
    assert knowledge.choices_note(10, {"base": [True] * 7})[0].startswith("Multiple choice asked 7 of the 10")
