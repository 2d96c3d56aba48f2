"""Answer metrics: pure functions of (answer, reference), small enough to check by hand.

Every metric works on Russian as well as English: words are Unicode word characters
(`\\w+`, so Cyrillic, Latin and digits), compared case-folded.

- exact_match      1.0 when answer and reference are the same text after normalisation
                   (case, punctuation, whitespace), else 0.0
- token_f1         SQuAD-style F1 of the two bags of words
- rouge_l          ROUGE-L F-measure from Google's `rouge-score` package, with a tokenizer
                   that keeps Cyrillic (its default one drops every non-Latin letter)
- key_info_recall  share of the reference's key items found in the answer: numbers,
                   dates, article/law references ("ст. 15 ГК РФ", "article 7", "152-ФЗ")
                   and names (capitalised words not opening a sentence); None when the
                   reference has none
- length_ratio     answer words / reference words
- contains         the expected phrase occurs in the answer (case-folded), as `checks:` do
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

WORD = re.compile(r"\w+", re.UNICODE)

MONTHS = (
    "января|февраля|марта|апреля|мая|июня|июля|августа|сентября|октября|ноября|декабря|"
    "january|february|march|april|may|june|july|august|september|october|november|december"
)
DATE = re.compile(
    rf"\b(?:\d{{4}}-\d{{1,2}}-\d{{1,2}}|\d{{1,2}}[./]\d{{1,2}}[./]\d{{2,4}}|\d{{1,2}}\s+(?:{MONTHS})(?:\s+\d{{4}})?)\b",
    re.IGNORECASE,
)
# "ст. 15 ГК РФ", "статья 15.1 КоАП", "статьи 169", "п. 2 ст. 1", "article 7 of ...", "art. 12", "§ 5"
ARTICLE = re.compile(  # the keyword in any case; the code after the number in capitals (ГК РФ, УК, КоАП)
    r"(?i:\bст\.?|\bстать[яиеюй]\w*|\bart\.?|\barticles?|§)\s*(\d+(?:\.\d+)*)"
    r"((?:\s+(?:[A-ZА-ЯЁ][A-Za-zА-Яа-яЁё]*[A-ZА-ЯЁ]|РФ))*)"
)
LAW_NUMBER = re.compile(r"\b(\d+)\s*-\s*(ФЗ|ФКЗ|FZ)\b", re.IGNORECASE)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
SENTENCE_END = re.compile(r"[.!?…]\s*$")


def words(text: str) -> list[str]:
    """Case-folded words (Unicode letters and digits); punctuation is dropped."""
    return WORD.findall(unicodedata.normalize("NFC", text).casefold())


def normalize(text: str) -> str:
    return " ".join(words(text))


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def token_f1(answer: str, reference: str) -> float:
    got, want = words(answer), words(reference)
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


class UnicodeWords:
    """A tokenizer for rouge_score that keeps every script (its default drops non-Latin letters)."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeWords())


def rouge_l(answer: str, reference: str) -> float:
    return _rouge().score(reference, answer)["rougeL"].fmeasure


def length_ratio(answer: str, reference: str) -> float | None:
    want = words(reference)
    return len(words(answer)) / len(want) if want else None


def contains(answer: str, expect: str) -> bool:
    return expect.casefold() in answer.casefold()


@dataclass(frozen=True)
class KeyItem:
    kind: str  # number | date | law | name
    value: str  # canonical form


def _date_value(text: str) -> str:
    return " ".join(words(text))


def _law_value(number: str, code: str) -> str:
    return " ".join(["ст", number, *words(code)])


def key_items(text: str) -> list[KeyItem]:
    """Numbers, dates, article/law references and names in `text`, each once, in order.

    Dates and law references are taken whole first; the numbers inside them are not
    counted again as numbers. A name is a capitalised word (Latin or Cyrillic, 2+
    letters) that does not open a sentence and is not part of a law reference.
    """
    found: list[KeyItem] = []
    taken: list[tuple[int, int]] = []

    def add(item: KeyItem, span: tuple[int, int]) -> None:
        taken.append(span)
        if item not in found:
            found.append(item)

    for match in DATE.finditer(text):
        add(KeyItem("date", _date_value(match.group(0))), match.span())
    for match in ARTICLE.finditer(text):
        if not any(s <= match.start() < e for s, e in taken):
            add(KeyItem("law", _law_value(match.group(1), match.group(2) or "")), match.span())
    for match in LAW_NUMBER.finditer(text):
        if not any(s <= match.start() < e for s, e in taken):
            add(KeyItem("law", f"{match.group(1)} {match.group(2).casefold()}"), match.span())
    for match in NUMBER.finditer(text):
        if not any(s <= match.start() < e for s, e in taken):
            add(KeyItem("number", match.group(0).replace(",", ".")), match.span())
    for match in WORD.finditer(text):
        word = match.group(0)
        if any(s <= match.start() < e for s, e in taken):
            continue
        if len(word) < 2 or not word[0].isupper() or not word[0].isalpha():
            continue
        before = text[: match.start()]
        if not before.strip() or SENTENCE_END.search(before):
            continue  # opens the text or a sentence: capitalised for grammar, not as a name
        add(KeyItem("name", word.casefold()), match.span())
    return found


def key_info_recall(answer: str, reference: str) -> float | None:
    """Share of the reference's key items present in the answer (None: the reference has none).

    Numbers, dates and law references must appear as such in the answer; a name must
    appear as a word anywhere in it (a name may open the answer's sentence).
    """
    wanted = key_items(reference)
    if not wanted:
        return None
    got = set(key_items(answer))
    answer_numbers = {item.value for item in got if item.kind == "number"}
    answer_words = set(words(answer))
    hits = 0
    for item in wanted:
        if item.kind == "name":
            hits += item.value in answer_words
        elif item.kind == "number":
            hits += item.value in answer_numbers or item.value in answer_words
        else:
            hits += item in got
    return hits / len(wanted)


def score(answer: str, reference: str, expect: str | None = None) -> dict[str, float | None]:
    """All metrics of one answer against its reference (and `contains` when an expected phrase is given)."""
    result: dict[str, float | None] = {
        "exact_match": exact_match(answer, reference),
        "token_f1": token_f1(answer, reference),
        "rouge_l": rouge_l(answer, reference),
        "key_info_recall": key_info_recall(answer, reference),
        "length_ratio": length_ratio(answer, reference),
    }
    if expect:
        result["contains"] = float(contains(answer, expect))
    return result


METRICS = ("exact_match", "token_f1", "rouge_l", "key_info_recall", "length_ratio", "contains")


def mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
