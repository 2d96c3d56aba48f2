"""Which of the teacher's pairs become rows: parsed, of a sane length, asked in the user's own
words, standing alone (the model is asked without the excerpt), and grounded in the chunk.
Each refusal is a (kind, reason) for rejects.jsonl.

Grounding is checked on the surface, which is what a wrong answer usually gets wrong: every
number, date and article number of the answer occurs in the chunk; every name (a capitalised
word inside a sentence) occurs in the chunk; and most of its content words do. Words match
on a common stem-sized prefix, so that Russian and Kazakh inflections (Мирогаст, Мирогаста)
count as the same word.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from wrapper.config.schema import SynthSettings

THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)  # a reasoning teacher's thoughts before its JSON
NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")
DIGITS = re.compile(r"\d+")
WORD = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")
SENTENCE_START = re.compile(r"(?:^|[.!?…:;\n]\s*|[\"«“(]\s*)$")
MIN_PREFIX = 4  # words of up to 4 letters must match whole; longer ones on a prefix
CONTENT_WORD_LETTERS = 4
COPIED_QUESTION_WORDS = 4  # a question of at least this many words found verbatim in the chunk is copied
# Function words long enough to pass as content words; they say nothing about grounding.
STOPWORDS = frozenset(
    """
    about above after again also because been before being below between both could does doing down during each
    from further have having here into itself just more most once only other over same should some such than that
    their them then there these they this those through under until very what when where which while with would
    your yours also according text excerpt document question answer
    этот эта это эти того тому этом этой этих который которая которое которые которых также если когда чтобы
    может могут было были быть будет будут есть нет более менее очень только после перед между через пока
    всех весь вся всего такой такие также такая свой своих своей является являются согласно тексте фрагменте
    және немесе үшін бойынша туралы бұл осы сол деген болып болады емес бар жоқ мен сен біз олар қандай
    қалай неге сияқты арқылы кейін дейін бірақ сондықтан""".split()  # noqa: SIM905 - a word list reads better as text
)

# A question that points at "the text" can't be answered by a model asked without it: in en, ru
# and kk, the words that point at the excerpt (its name, "this/the given/the above ..." before it).
LEANS_ON_EXCERPT = re.compile(
    r"\b(?:"
    r"(?:the|this|that|given|above|following) (?:text|excerpt|passage|fragment|document|section|extract)s?"
    r"|this (?:article|chapter|paragraph|page)|the author|(?:mentioned|described|stated|said|quoted) above"
    r"|according to the (?:text|excerpt|passage|document)|(?:in|from) the above"
    r"|(?:в|из|по|к) текст(?:е|а|у)|фрагмент\w*|отрыв(?:ок|к\w*)"
    r"|(?:эт|данн|приведённ|приведенн|указанн)\w* (?:текст|стать|документ|раздел|глав)\w*"
    r"|(?:упомянут|описан|указан|сказан|приведён|приведен)\w* выше|выше(?:упомянут|указанн|изложенн)\w*"
    r"|мәтін\w*|үзінді\w*|(?:осы|берілген|жоғарыдағы) (?:бап|құжат|бөлім|тарау)\w*|жоғарыда"
    r")\b",
    re.IGNORECASE,
)


def leans_on_excerpt(question: str) -> str | None:
    """The words by which a question points at the excerpt it was written from, if any."""
    found = LEANS_ON_EXCERPT.search(question)
    return found.group() if found else None


class Rejected(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass
class Pair:
    question: str
    answer: str
    reasoning: str | None = None

    def as_dict(self) -> dict:
        found = {"question": self.question, "answer": self.answer}
        if self.reasoning is not None:
            found["reasoning"] = self.reasoning
        return found


# ---- parsing -------------------------------------------------------------------------------


def parse_pairs(text: str, kind: str) -> list[Pair]:
    """The pairs of a reply: {"pairs": [...]}, a bare list, or one pair; JSON inside prose or a
    code fence is found. Raises Rejected("unparseable") with what was wrong."""
    value = _first_json(text)
    items = value.get("pairs") if isinstance(value, dict) and "pairs" in value else value
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise Rejected("unparseable", "the reply has no list of pairs")
    pairs = []
    for item in items:
        fields = ("question", "reasoning", "answer") if kind == "cot" else ("question", "answer")
        if not isinstance(item, dict) or not all(isinstance(item.get(f), str) for f in fields):
            raise Rejected("unparseable", f"a pair without the string fields {', '.join(fields)}")
        pairs.append(Pair(item["question"].strip(), item["answer"].strip(), _strip(item.get("reasoning"))))
    return pairs


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else None


def _first_json(text: str):
    text = THINKING.sub("", text)
    try:
        return json.loads(text)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                return decoder.raw_decode(text, start)[0]
            except ValueError:
                continue
    snippet = " ".join(text.split())[:80]
    raise Rejected("unparseable", f"no JSON in the reply ({snippet!r})" if snippet else "an empty reply")


def parse_score(text: str) -> int:
    value = _first_json(text)
    score = value.get("score") if isinstance(value, dict) else value
    if isinstance(score, bool) or not isinstance(score, int | float) or not 1 <= score <= 5:
        raise Rejected("unparseable", f"the judge's score is not 1-5: {text[:60]!r}")
    return int(score)


# ---- the checks ------------------------------------------------------------------------------


class Grounding:
    """What one chunk holds: its numbers, its digit runs, and the prefixes of its words."""

    def __init__(self, chunk: str):
        self.folded = _fold(chunk)
        self.numbers = set(NUMBER.findall(chunk))
        self.digit_runs = set(DIGITS.findall(chunk))
        self.prefixes: set[str] = set()
        for word in WORD.findall(chunk.casefold()):
            self.prefixes.update(word[:k] for k in range(MIN_PREFIX, len(word) + 1))
            if len(word) < MIN_PREFIX:
                self.prefixes.add(word)

    def has_word(self, word: str) -> bool:
        word = word.casefold()
        if len(word) <= MIN_PREFIX:
            return word in self.prefixes
        # a stem-sized prefix: inflected endings (2-3 letters in ru/kk) may differ
        return word[: max(MIN_PREFIX, len(word) - 3)] in self.prefixes

    def has_number(self, number: str) -> bool:
        return number in self.numbers or all(run in self.digit_runs for run in DIGITS.findall(number))

    def missing_numbers(self, text: str) -> list[str]:
        return [n for n in NUMBER.findall(text) if not self.has_number(n)]

    def missing_names(self, text: str) -> list[str]:
        missing = []
        for match in WORD.finditer(text):
            word = match.group()
            inside_sentence = not SENTENCE_START.search(text[: match.start()])
            if word[0].isupper() and inside_sentence and not self.has_word(word):
                missing.append(word)
        return missing

    def content_share(self, text: str) -> tuple[float, int]:
        words = [w for w in WORD.findall(text) if len(w) >= CONTENT_WORD_LETTERS and w.casefold() not in STOPWORDS]
        if not words:
            return 1.0, 0
        return sum(self.has_word(w) for w in words) / len(words), len(words)


def _fold(text: str) -> str:
    return " ".join(WORD.findall(text.casefold()))


def check_pair(pair: Pair, grounding: Grounding, settings: SynthSettings) -> None:
    """Raises Rejected with the first reason the pair can't be a row."""
    if not pair.question or not pair.answer or (pair.reasoning is not None and not pair.reasoning):
        raise Rejected("empty", "an empty question, answer or reasoning")
    if len(pair.answer) < settings.min_answer_chars:
        raise Rejected(
            "too_short", f"answer of {len(pair.answer)} characters (min_answer_chars {settings.min_answer_chars})"
        )
    if len(pair.answer) > settings.max_answer_chars:
        raise Rejected(
            "too_long", f"answer of {len(pair.answer)} characters (max_answer_chars {settings.max_answer_chars})"
        )
    leaning = leans_on_excerpt(pair.question)
    if leaning:
        raise Rejected("not_standalone", f"the question leans on the excerpt ({leaning!r}); it is asked without it")
    question = _fold(pair.question)
    if len(question.split()) >= COPIED_QUESTION_WORDS and question in grounding.folded:
        raise Rejected("copied_question", "the question is a sentence of the chunk, not a user's question")
    if question == _fold(pair.answer):
        raise Rejected("copied_question", "the answer repeats the question")
    missing = grounding.missing_numbers(pair.answer + "\n" + (pair.reasoning or ""))
    if missing:
        raise Rejected("ungrounded", f"numbers not in the chunk: {', '.join(missing[:5])}")
    names = grounding.missing_names(pair.answer)
    if names:
        raise Rejected("ungrounded", f"names not in the chunk: {', '.join(names[:5])}")
    share, words = grounding.content_share(pair.answer)
    if share < settings.min_grounding:
        raise Rejected(
            "ungrounded",
            f"{share:.0%} of the answer's {words} content words occur in the chunk "
            f"(min_grounding {settings.min_grounding:g})",
        )


# ---- --kind facts ------------------------------------------------------------------------------

SUPPORT_SHARE = 0.9  # a support sentence not found verbatim must still be the chunk's words, nearly all
PHRASING_OVERLAP = 0.8  # two questions of one fact sharing this much of their words say the same


@dataclass
class Fact:
    id: str  # the chunk's id and the fact's number: the same on every run
    text: str
    support: str

    def as_dict(self) -> dict:
        return {"fact": self.id, "text": self.text, "support": self.support}


def parse_facts(text: str) -> list[tuple[str, str]]:
    """(fact, support sentence) of each fact in a reply {"facts": [...]}."""
    value = _first_json(text)
    items = value.get("facts") if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise Rejected("unparseable", "the reply has no list of facts")
    if not all(
        isinstance(i, dict) and isinstance(i.get("fact"), str) and isinstance(i.get("support"), str) for i in items
    ):
        raise Rejected("unparseable", "a fact without the string fields fact, support")
    return [(item["fact"].strip(), item["support"].strip()) for item in items]


def parse_rewrites(text: str) -> list[str]:
    value = _first_json(text)
    items = value.get("rewrites") if isinstance(value, dict) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise Rejected("unparseable", "the reply has no list of rewrites")
    return [item.strip() for item in items]


def check_fact(fact: Fact, grounding: Grounding, settings: SynthSettings) -> None:
    """The support sentence is the chunk's (verbatim up to case and punctuation, or nearly all its
    words with every number), and the fact says nothing the chunk doesn't."""
    if not fact.text or not fact.support:
        raise Rejected("empty", "a fact or its support sentence is empty")
    if _fold(fact.support) not in grounding.folded:
        missing = grounding.missing_numbers(fact.support)
        share, _ = grounding.content_share(fact.support)
        if missing or share < SUPPORT_SHARE:
            raise Rejected("ungrounded_fact", f"the support sentence is not in the chunk: {fact.support[:80]!r}")
    missing = grounding.missing_numbers(fact.text) or grounding.missing_names(fact.text)
    share, words = grounding.content_share(fact.text)
    if missing or share < settings.min_grounding:
        what = f"{', '.join(missing[:5])} not in the chunk" if missing else f"{share:.0%} of {words} words in the chunk"
        raise Rejected("ungrounded_fact", f"the fact says more than the chunk ({what})")


def fact_grounding(fact: Fact) -> Grounding:
    """What a phrasing's answer is checked against: its fact, and the sentence behind it."""
    return Grounding(f"{fact.text}\n{fact.support}")


def same_phrasing(question: str, kept: list[str]) -> str | None:
    """The kept question of the same fact this one nearly repeats (word sets overlapping by
    PHRASING_OVERLAP or more), if any: a near-identical phrasing adds an exposure, not a form."""
    words = set(_fold(question).split())
    for other in kept:
        others = set(_fold(other).split())
        if words and others and len(words & others) / len(words | others) >= PHRASING_OVERLAP:
            return other
    return None


def check_rewrite(text: str, grounding: Grounding) -> None:
    """A rewrite keeps the chunk's numbers and names and brings none of its own."""
    if not text:
        raise Rejected("empty", "an empty rewrite")
    missing = grounding.missing_numbers(text)
    if missing:
        raise Rejected("ungrounded", f"numbers not in the chunk: {', '.join(missing[:5])}")
    names = grounding.missing_names(text)
    if names:
        raise Rejected("ungrounded", f"names not in the chunk: {', '.join(names[:5])}")
