"""Does the fine-tune know the documents? The knowledge sets of `ftw eval`, from the run's prepared data
when its rows carry `fact` (wrapper/data/knowledge.py, docs/data.md#facts):

  seen    a seeded sample of the trained questions (runs/RUN/data/train.jsonl): a sanity check, near 100%
  probes  the held-out phrasings of trained facts (probes.jsonl): the headline
  unseen  the questions about chunks never trained (unseen.jsonl): right, wrong or abstained; the wrong
          ones are what the fine-tune makes up

An answer is right when it holds the reference's key words (`key_match`) of those the question does
not already give: its numbers and names, or where it has none, most of its content words; words match
on a stem-sized prefix as the grounding filter of `ftw data synth` matches them (Мирогаст, Мирогаста).
Each answer may run as long as its reference needs in the model's own tokens (`answer_budget`), so a
long Russian answer is not cut mid-word and scored wrong.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.core.eval_result import KNOWLEDGE_SETS, KnowledgeResult, Score
from wrapper.data.formats import ASSISTANT, USER, Row, detect_format, parse_row
from wrapper.data.readers import Problem, read_json_records
from wrapper.eval.sets import Item
from wrapper.synth.filters import CONTENT_WORD_LETTERS, NUMBER, STOPWORDS, WORD, Grounding

OPEN_BOOK = "open_book"
OPEN_BOOK_PROMPT = "{text}\n\n{question}"  # the chunk, then the probe: the model may read the answer
FILES = {"seen": "train.jsonl", "probes": "probes.jsonl", "unseen": "unseen.jsonl"}
KEY_CONTENT_SHARE = 0.5  # of the reference's content words (those the question lacks) the answer must hold
Z95 = 1.96

# Phrases an answer that declines to answer uses (casefolded), en, ru, kk: "not attempted", not wrong.
ABSTENTIONS = (
    "i don't know",
    "i do not know",
    "i'm not sure",
    "i am not sure",
    "not sure",
    "no information",
    "don't have information",
    "do not have information",
    "cannot answer",
    "can't answer",
    "unable to answer",
    "not mentioned",
    "unknown to me",
    "не знаю",
    "не уверен",
    "нет информации",
    "нет данных",
    "нет сведений",
    "не могу ответить",
    "не могу сказать",
    "не указано",
    "мне неизвестно",
    "неизвестно",
    "білмеймін",
    "білмейміз",
    "ақпарат жоқ",
    "мәлімет жоқ",
    "мәліметім жоқ",
    "жауап бере алмаймын",
    "айта алмаймын",
    "белгісіз",
    "сенімді емеспін",
)
SPACES = re.compile(r"\s+")
# a phrase counts as a whole: "неизвестно" declines, "неизвестного" (of someone unknown) does not
ABSTAINS = re.compile("|".join(rf"(?<!\w){re.escape(phrase)}(?!\w)" for phrase in ABSTENTIONS), re.IGNORECASE)


@dataclass
class KnowledgeSets:
    items: dict[str, list[Item]]  # seen | probes | unseen -> the questions
    sources: dict[str, dict[str, Any]]  # -> file, rows, of, seed
    answers: dict[str, Item] = field(default_factory=dict)  # fact -> a question of it: its answer, language
    chunk_texts: dict[str, str] = field(default_factory=dict)  # chunk -> its text (a document row's)
    seed: int = 0

    @property
    def open_book(self) -> list[Item]:
        """The probes whose chunk's text is known, asked with it in the prompt (the base model answers them)."""
        return [
            Item(
                OPEN_BOOK,
                item.id,
                [
                    *item.messages[:-1],
                    {"role": "user", "content": OPEN_BOOK_PROMPT.format(text=text, question=item.prompt)},
                ],
                item.reference,
                system=item.system,
                lang=item.lang,
                fact=item.fact,
                document=item.document,
                chunk=item.chunk,
            )
            for item in self.items["probes"]
            if item.chunk and (text := self.chunk_texts.get(item.chunk))
        ]

    @property
    def empty(self) -> bool:
        return not any(self.items.values())


# ---- the sets --------------------------------------------------------------------------------


def fact_rows(path: Path, set_name: str, chunk_texts: dict[str, str] | None = None) -> list[Item]:
    """The questions of a prepared file that name their fact, each with its conversation and reference;
    `chunk_texts` gets the text of each chunk a document row of the file gives (its `chunk`, no `fact`)."""
    items = []
    for record in read_json_records(path):
        value = record.value
        if record.problem is not None or not isinstance(value, dict):
            continue
        parsed = conversation_of(value)
        if parsed is None:
            continue
        turns, row = parsed
        if not value.get("fact"):
            if value.get("chunk") and chunk_texts is not None:
                chunk_texts.setdefault(str(value["chunk"]), turns[-1]["content"])
            continue
        items.append(
            Item(
                set_name,
                f"{set_name}{len(items)}",
                turns[:-1],
                turns[-1]["content"],
                system=row.system,
                lang=row.lang,
                fact=str(value["fact"]),
                document=document_of(value),
                chunk=str(value["chunk"]) if value.get("chunk") else None,
            )
        )
    return items


def conversation_of(value: dict) -> tuple[list[dict], Row] | None:
    """A row's user/assistant turns ending in an answer to a question, with the row parsed; None for a row
    prepare would not keep."""
    try:
        row = parse_row(value, detect_format(value) or "sharegpt")
    except Problem:  # `ftw data check` reports bad rows; prepare kept none
        return None
    turns = [
        {"role": "user" if role == USER else "assistant", "content": text}
        for role, text in row.turns
        if role in (USER, ASSISTANT)
    ]
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        return None
    return turns, row


def document_of(row: dict) -> str | None:
    """The document a row was written from: its `source` without the line or page ("law.pdf:41" -> law.pdf)."""
    source = row.get("source")
    if not isinstance(source, str) or not source:
        return None
    head, _, tail = source.rpartition(":")
    return head if head and tail.isdigit() else source


def load_knowledge(run_dir: Path, seen_sample: int, seed: int) -> KnowledgeSets:
    """The knowledge sets of a run's prepared data; empty unless it holds probes.jsonl or unseen.jsonl."""
    data = run_dir / "data"
    sets = KnowledgeSets({name: [] for name in KNOWLEDGE_SETS}, {}, seed=seed)
    if not any((data / FILES[name]).is_file() for name in ("probes", "unseen")):
        return sets
    for name in KNOWLEDGE_SETS:
        path = data / FILES[name]
        found = fact_rows(path, name, sets.chunk_texts) if path.is_file() else []
        for item in found:
            sets.answers.setdefault(item.fact or "", item)
        picked = found
        if name == "seen" and len(found) > seen_sample:
            picked = [found[i] for i in sorted(random.Random(f"{seed}:seen").sample(range(len(found)), seen_sample))]
        sets.items[name] = picked
        sets.sources[name] = {"file": str(path), "rows": len(picked), "of": len(found), "seed": seed}
    return sets


def answer_budget(reference_tokens: int) -> int:
    """New tokens an answer may take: half as much again as its reference in the model's tokens, and a few
    more, so that an answer worded a little longer is not cut before it says what it knows."""
    return reference_tokens + reference_tokens // 2 + 8


# ---- grading ---------------------------------------------------------------------------------


def content_words(text: str) -> list[str]:
    return [w for w in WORD.findall(text) if len(w) >= CONTENT_WORD_LETTERS and w.casefold() not in STOPWORDS]


def key_match(answer: str, reference: str, question: str = "") -> bool:
    """The answer holds the reference's key words, of those the question does not already give (a question
    that names the Amber Gate makes the answer say who): every number and name; where the reference has
    none beyond the question's, most of its content words."""
    given, said = Grounding(question), Grounding(answer)
    numbers = [n for n in NUMBER.findall(reference) if not given.has_number(n)]
    names = [name for name in Grounding("").missing_names(reference) if not given.has_word(name)]
    if numbers or names:
        return all(said.has_number(n) for n in numbers) and all(said.has_word(name) for name in names)
    words = [w for w in content_words(reference) if not given.has_word(w)] or content_words(reference)
    if not words:
        return True
    return sum(said.has_word(w) for w in words) / len(words) >= KEY_CONTENT_SHARE


def abstained(answer: str) -> bool:
    """The answer declines (I don't know, не знаю, білмеймін, ...) rather than states something."""
    return ABSTAINS.search(SPACES.sub(" ", answer.casefold().replace("’", "'"))) is not None


def question_of(set_name: str, item_id: str, sets: KnowledgeSets, asked: str) -> str:
    """The question an answer is graded against: an open-book answer's is its probe's, not the chunk with it
    (the chunk would give every key word)."""
    if set_name != OPEN_BOOK:
        return asked
    return next((item.prompt for item in sets.items["probes"] if item.id == item_id), asked)


def grade(answer: str, reference: str, question: str = "") -> str:
    """correct | incorrect | not_attempted (an abstention that does not also give the answer)."""
    if key_match(answer, reference, question):
        return "correct"
    return "not_attempted" if abstained(answer) else "incorrect"


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """The Wilson score interval of a share (95% by default): sound at 0/n and n/n, where the normal one is not."""
    if not n:
        return None, None
    share = correct / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score_of(grades: list[str], three_way: bool = False) -> Score:
    n, correct = len(grades), grades.count("correct")
    low, high = wilson(correct, n)
    score = Score(n, correct, correct / n if n else None, low, high)
    if three_way:
        score.incorrect, score.not_attempted = grades.count("incorrect"), grades.count("not_attempted")
    return score


# ---- multiple choice by log-likelihood ------------------------------------------------------------

CHOICES = 4


@dataclass(frozen=True)
class Choices:
    options: list[str]  # the reference and three distractors, shuffled (seeded per question)
    answer: int  # the reference's place among them


def question_word(item: Item) -> str:
    words = WORD.findall(item.prompt.casefold())
    return words[0] if words else ""


KEY_TOKEN = re.compile(r"\w+(?:[-'’]\w+)*")


@dataclass(frozen=True)
class KeySpan:
    """Where a reference states what its question asks: a run of names and numbers the question lacks."""

    start: int
    end: int
    kind: str  # "number" when it holds a digit, else "name"


def key_spans(reference: str, question: str) -> list[KeySpan]:
    """The reference's runs of capitalised words and numbers that its question does not contain ("Orlen
    Vask" in "The Amber Gate is guarded by the knight Orlen Vask."; "14 March 1502"). A capitalised first
    word counts only when nothing else does: it is most often just the start of the sentence."""
    asked = {word.casefold() for word in KEY_TOKEN.findall(question)}
    runs: list[list[int]] = []
    for token in KEY_TOKEN.finditer(reference):
        word = token.group()
        is_key = any(c.isdigit() for c in word) or (word[0].isupper() and word.casefold() not in asked)
        if not is_key:
            continue
        if runs and reference[runs[-1][1] : token.start()].isspace():
            runs[-1][1] = token.end()
        else:
            runs.append([token.start(), token.end()])
    spans = [KeySpan(a, b, "number" if any(c.isdigit() for c in reference[a:b]) else "name") for a, b in runs]
    if len(spans) > 1 and spans[0].start == 0 and spans[0].kind == "name":
        spans = spans[1:]
    return spans


def with_key_of(item: Item, spans: list[KeySpan], other: Item) -> str | None:
    """The reference of `item` (whose key_spans are `spans`) stating `other`'s key instead of its own (the
    knight Duskmere), or None when `other` has no key of the kind `item`'s states."""
    theirs = key_spans(other.reference, other.prompt)
    text, changed = item.reference, False
    for span in reversed(spans):  # from the end, so the earlier offsets hold
        same_kind = [t for t in theirs if t.kind == span.kind]
        if same_kind:
            swap = same_kind[min(spans.index(span), len(same_kind) - 1)]
            text = text[: span.start] + other.reference[swap.start : swap.end] + text[span.end :]
            changed = True
    return text if changed else None


def choices_of(item: Item, answers: dict[str, Item], seed: int) -> Choices | None:
    """The question's options: its reference and three distractors from other facts of the same kind (the
    same language, asked with the same question word where there are enough), or None when there are not
    three. Where the reference states its key in a sentence, a distractor is that sentence with another
    fact's key of the same kind in its place, so that the options differ only in what is asked, not in
    how much they echo the question. Never answers in another language: a model rejects those unread."""
    same_lang = [
        other
        for fact, other in sorted(answers.items())
        if fact != item.fact and other.reference != item.reference and other.lang == item.lang
    ]
    alike = [other for other in same_lang if question_word(other) == question_word(item)]
    rng = random.Random(f"{seed}:{item.set}:{item.id}:choices")
    spans = key_spans(item.reference, item.prompt)
    for pool in (alike, same_lang):
        candidates = [with_key_of(item, spans, other) if spans else other.reference for other in pool]
        distinct = sorted({c for c in candidates if c and c != item.reference})
        if len(distinct) >= CHOICES - 1:
            options = rng.sample(distinct, CHOICES - 1) + [item.reference]
            rng.shuffle(options)
            return Choices(options, options.index(item.reference))
    return None


def pick(nlls: list[tuple[float, int]]) -> int:
    """The option the model finds likeliest: the least mean negative log-likelihood per token (a sum would
    favour the shortest option)."""
    means = [nll / count if count else math.inf for nll, count in nlls]
    return means.index(min(means))


# ---- a judge model (optional) -------------------------------------------------------------------

JUDGED_SETS = ("probes", "unseen")
VERDICTS = ("correct", "incorrect", "not_attempted")
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": list(VERDICTS)}},
    "required": ["verdict"],
}
JUDGE_PROMPT = """You grade one answer to a question against the reference answer{source_said}.

Question: {question}
Reference answer: {reference}{source}
Answer to grade: {answer}

The verdict is "correct" when the answer states what the reference states (in any words or language),
"incorrect" when it states something else or contradicts it, "not_attempted" when it declines or says
it does not know. Reply with JSON only: {{"verdict": "correct" | "incorrect" | "not_attempted"}}"""
VERDICT = re.compile(r"\b(not_attempted|incorrect|correct)\b")


def judge_messages(item: Item, answer: str, chunk: str | None) -> list[dict]:
    """What the judge is asked about one answer: the question, the reference and, when known, the chunk."""
    prompt = JUDGE_PROMPT.format(
        source_said=" and the source text it was written from" if chunk else "",
        question=item.prompt,
        reference=item.reference,
        source=f"\nSource text: {chunk}" if chunk else "",
        answer=answer,
    )
    return [{"role": "user", "content": prompt}]


def parse_verdict(text: str) -> str | None:
    """The judge's verdict: the JSON's, else the first verdict word of the reply; None when there is none."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict) and value.get("verdict") in VERDICTS:
        return str(value["verdict"])
    found = VERDICT.search(text.casefold())
    return found.group(1) if found else None


# ---- the summary -----------------------------------------------------------------------------


def recovery_of(tuned: float | None, base: float | None, open_book: float | None) -> float | None:
    """(tuned - base) / (open book - base): the share of what reading the chunk gives the base that the
    fine-tune gives without it; None where the chunk gives the base nothing."""
    if tuned is None or base is None or open_book is None or open_book <= base:
        return None
    return (tuned - base) / (open_book - base)


def open_book_of(sets: KnowledgeSets, answers, kinds: tuple[str, ...], scored) -> tuple[Score | None, dict]:
    """The base's score with the chunks in the prompt, and each tuned model's recovery, on the same probes."""
    asked = sets.open_book
    base_answers = answers.get("base", {}).get(OPEN_BOOK, {})
    if not asked or not all(item.id in base_answers for item in asked):
        return None, {}
    ids = {item.id for item in asked}
    probes = [item for item in sets.items["probes"] if item.id in ids]  # in the same order as asked
    open_score = score_of([grade(base_answers[i.id]["answer"], i.reference, i.prompt) for i in probes])
    closed = {kind: scored(probes, kind, "probes").accuracy for kind in kinds}
    recovery = {
        kind: recovery_of(closed[kind], closed["base"], open_score.accuracy) for kind in kinds if kind != "base"
    }
    return open_score, recovery


def summarize(
    sets: KnowledgeSets,
    answers: dict[str, dict[str, dict[str, dict]]],
    kinds: tuple[str, ...],
    chosen: dict[str, list[bool]] | None = None,
    judged: dict[str, dict[str, dict[str, str | None]]] | None = None,
    judge: str | None = None,
) -> KnowledgeResult:
    """answers: kind -> set -> item id -> the model's scored row (its "answer"); chosen: kind -> whether it
    picked the reference, per probe with options."""

    def scored(items: list[Item], kind: str, set_name: str) -> Score:
        grades = [grade(answers[kind][set_name][i.id]["answer"], i.reference, i.prompt) for i in items]
        return score_of(grades, three_way=set_name == "unseen")

    def grouped(by) -> dict[str, dict[str, dict[str, Score]]]:
        found: dict[str, dict[str, dict[str, Score]]] = {}
        for set_name in KNOWLEDGE_SETS:
            groups = sorted({by(item) or "unknown" for item in sets.items[set_name]})
            if len(groups) < 2:
                continue
            found[set_name] = {
                group: {
                    kind: scored([i for i in sets.items[set_name] if (by(i) or "unknown") == group], kind, set_name)
                    for kind in kinds
                }
                for group in groups
            }
        return found

    open_score, recovery = open_book_of(sets, answers, kinds, scored)

    def verdicts(kind: str, set_name: str) -> Score:
        found = [(judged or {})[kind][set_name].get(item.id) for item in sets.items[set_name]]
        return score_of([v for v in found if v], three_way=set_name == "unseen")

    return KnowledgeResult(
        judged={
            name: {kind: verdicts(kind, name) for kind in kinds} for name in JUDGED_SETS if judged and sets.items[name]
        },
        judge=judge,
        sets=sets.sources,
        open_book=open_score,
        recovery=recovery,
        key_match={
            name: {kind: scored(sets.items[name], kind, name) for kind in kinds}
            for name in KNOWLEDGE_SETS
            if sets.items[name]
        },
        by_language=grouped(lambda item: item.lang),
        by_document=grouped(lambda item: item.document),
        multiple_choice={
            kind: score_of(["correct" if right else "incorrect" for right in picks])
            for kind, picks in (chosen or {}).items()
        },
        notes=[
            "An answer is right when it holds the reference's numbers and names (or, where it has none, most of its "
            "content words) that the question does not give, matched on a stem-sized prefix; 95% Wilson intervals. "
            "Each answer may take half as many tokens again as its reference, in the model's own tokens.",
            *choices_note(len(sets.items["probes"]), chosen),
        ],
    )


def choices_note(probes: int, chosen: dict[str, list[bool]] | None) -> list[str]:
    """Why multiple choice asked fewer probes than there are, when it did (a small dataset: the demo's)."""
    asked = max((len(picks) for picks in (chosen or {}).values()), default=0)
    if asked >= probes:
        return []
    return [
        f"Multiple choice asked {asked} of the {probes} probes: a probe needs three other facts in its language "
        f"whose answers state a key of the kind its own does (a name, a number), and the rest had fewer."
    ]
