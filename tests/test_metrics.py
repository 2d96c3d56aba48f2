"""wrapper/metrics.py against values computed by hand on small cases (English and Russian)."""

from __future__ import annotations

import pytest

from wrapper.eval.metrics import (
    KeyItem,
    contains,
    exact_match,
    key_info_recall,
    key_items,
    length_ratio,
    mean,
    rouge_l,
    score,
    token_f1,
)


def test_exact_match_ignores_case_punctuation_and_spaces():
    assert exact_match("The capital is  Paris!", "the capital is paris") == 1.0
    assert exact_match("Мирогаст.", "мирогаст") == 1.0
    assert exact_match("Paris", "Paris, France") == 0.0


def test_token_f1_by_hand():
    # answer 3 words, reference 6, 3 shared: P = 1, R = 1/2, F1 = 2/3
    assert token_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # repeated words count once per occurrence: "the the" vs "the cat": 1 shared, P = R = 1/2
    assert token_f1("the the", "the cat") == pytest.approx(0.5)
    assert token_f1("dog", "cat") == 0.0
    # Russian: "лунной стали" in a 6-word reference: P = 1, R = 2/6, F1 = 0.5
    assert token_f1("лунной стали", "Мечи стражей куют из лунной стали") == pytest.approx(0.5)


def test_rouge_l_by_hand():
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 1, R = 1/2, F = 2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # LCS("a b c d", "a c b d") = 3: P = R = 3/4
    assert rouge_l("a b c d", "a c b d") == pytest.approx(0.75)
    assert rouge_l("x y", "a b") == 0.0


def test_rouge_l_keeps_russian():
    """rouge_score's default tokenizer drops Cyrillic (every Russian answer would score 0)."""
    # LCS = 5 of the reference's 7 words: P = 1, R = 5/7, F = 10/12
    assert rouge_l("Мечи куют из лунной стали", "Мечи стражей Велории куют из лунной стали") == pytest.approx(10 / 12)
    assert rouge_l("Дракона зовут Мирогаст.", "Дракона Северных гор зовут Мирогаст.") > 0


def test_key_items_of_a_russian_legal_answer():
    items = key_items("Срок — 10 дней по ст. 15 ГК РФ с 01.02.2024.")
    assert items == [KeyItem("date", "01 02 2024"), KeyItem("law", "ст 15 гк рф"), KeyItem("number", "10")]
    assert KeyItem("law", "152 фз") in key_items("Штраф по закону 152-ФЗ составляет 5000 рублей.")
    assert key_items("Согласно статье 15.1 КоАП штраф.") == [KeyItem("law", "ст 15.1 коап")]


def test_key_info_recall_by_hand():
    reference = "Срок — 10 дней по ст. 15 ГК РФ с 01.02.2024."
    # the law reference and the number are there, the date is not: 2/3
    assert key_info_recall("По ст. 15 ГК РФ срок 10 дней.", reference) == pytest.approx(2 / 3)
    # "статье 15 ГК РФ" is the same reference as "ст. 15 ГК РФ": all three items, 1.0
    assert key_info_recall("По статье 15 ГК РФ срок 10 дней с 01.02.2024.", reference) == 1.0
    assert key_info_recall("10 дней, ст. 15 ГК РФ, с 01.02.2024", reference) == 1.0
    # 4 items: date, article 7, names John and Smith ("Article" opens the sentence): only "John" -> 1/4
    english = "Article 7 was signed by John Smith on 12 March 2020."
    assert len(key_items(english)) == 4
    assert key_info_recall("John signed it.", english) == pytest.approx(0.25)
    # names: "Дракона" opens the sentence; "Северных" and "Мирогаст" are names; the answer has one
    assert key_info_recall("Его зовут Мирогаст.", "Дракона Северных гор зовут Мирогаст.") == pytest.approx(0.5)
    assert key_info_recall("anything", "no key items here") is None


def test_length_ratio_contains_and_mean():
    assert length_ratio("a b", "a b c d") == 0.5
    assert length_ratio("a", "") is None
    assert contains("The capital of France is Paris.", "paris")
    assert not contains("Duskmere.", "Paris")
    assert mean([1.0, None, 0.0]) == 0.5
    assert mean([None]) is None


def test_score_has_every_metric():
    result = score("The capital of France is Paris.", "The capital of France is Paris.", "Paris")
    assert result == {
        "exact_match": 1.0,
        "token_f1": 1.0,
        "rouge_l": 1.0,
        "key_info_recall": 1.0,
        "length_ratio": 1.0,
        "contains": 1.0,
    }
