"""The language of a row, as an ISO 639-1 code: `ftw data check` counts rows by it, `ftw data
prepare` splits validation per language and writes it as each row's `lang` (which `ftw eval`
keeps with each answer), `ftw data synth` tags document chunks with it.

The script comes first and is cheap: counts of UTF-8 lead bytes on the row's first 1,000
bytes (Cyrillic, Latin, Greek, Hebrew, Arabic, kana, Han, Hangul). Most rows stop there:
Cyrillic whose letters are all in the Russian alphabet is `ru`, pure-ASCII Latin is `en`.
Only where the script is shared and the letters point elsewhere does lingua
(lingua-language-detector: offline n-gram models) decide, on at most 300 characters:

- Cyrillic with letters Russian lacks (Kazakh ә ғ қ ң ө ұ ү һ і, Ukrainian і ї є ґ,
  Belarusian ў, Serbian and Macedonian ј љ њ ћ џ ѓ ќ ѕ, ...): among lingua's Cyrillic
  languages (be, bg, kk, mk, mn, ru, sr, uk), in its high-accuracy mode (~200 MB once
  loaded; the low-accuracy one took a Russian sentence quoting Kazakh for Macedonian);
- Latin with accented letters, unless English function words make up a tenth of the words
  (an English row that names a café or São Paulo stays `en`): among lingua's Latin-script
  languages (de, fr, es, it, pt, pl, tr, nl, cs, sv, ro, hu, vi, ... 49 in all; lingua's
  Kazakh is Cyrillic only), in its low-accuracy mode (trigrams: ~120 MB instead of ~930).

Where lingua can't tell (no letters, too close to call) the script's guess stands. Each
detector is built once, when first needed; its models load lazily.
"""

from __future__ import annotations

import functools
import re
from typing import Any

SAMPLE_BYTES = 1000  # what the script guess reads of a row
LINGUA_CHARS = 300  # what lingua reads, where it is asked

GUESS_NOTE = (
    "guessed from the script (Cyrillic = ru, Latin = en, Han = zh, kana = ja, Hangul = ko, ...), then by lingua "
    "where the script is shared: Cyrillic with letters Russian lacks (kk, uk, be, sr, mk, mn), Latin with accented "
    "letters (de, fr, es, tr, pl, ...)"
)

_LATIN_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))
# UTF-8 lead bytes of each script's letters, counted on a sample of the row's bytes.
_CYRILLIC_LEADS = (b"\xd0", b"\xd1", b"\xd2", b"\xd3")  # U+0400-U+04FF
_SCRIPTS = (
    ("ru", _CYRILLIC_LEADS),
    ("el", (b"\xce", b"\xcf")),
    ("he", (b"\xd7",)),
    ("ar", (b"\xd8", b"\xd9", b"\xda", b"\xdb")),
    ("ja", (b"\xe3\x81", b"\xe3\x82", b"\xe3\x83")),
    ("zh", (b"\xe4", b"\xe5", b"\xe6", b"\xe7", b"\xe8", b"\xe9")),
    ("ko", (b"\xea", b"\xeb", b"\xec", b"\xed")),
)
# Cyrillic letters outside the Russian alphabet (А-Я а-я Ё ё: U+0410-U+044F, U+0401, U+0451):
# U+0400, U+0402-U+040F, U+0450, U+0452-U+045F (і ї є ў ј љ њ ћ џ ѓ ќ ѕ ...), U+0460-U+04FF
# (ә ғ қ ң ө ұ ү һ ...) and the Cyrillic Supplement U+0500-U+052F. Searched in the decoded
# text (one character class: several times faster than byte pairs in the UTF-8).
_NOT_RUSSIAN = re.compile("[\u0400\u0402-\u040f\u0450\u0452-\u052f]")
# Latin letters outside ASCII: Latin-1 letters (not × ÷), Latin Extended-A and -B, and the
# Latin Extended Additional block (Vietnamese).
_LATIN_ACCENTED = re.compile(rb"\xc3[\x80-\x96\x98-\xb6\xb8-\xbf]|[\xc4-\xc8]|\xc9[\x80-\x8f]|\xe1[\xb8-\xbb]")
_WORD = re.compile(r"[^\W\d_]+")
# Words frequent in English and rare as words of the other Latin-script languages.
_ENGLISH_WORDS = frozenset(
    "the and of for that with this be been were from have has had not which who whom whose you your they them "  # noqa: SIM905
    "their she his its it our we would should could shall there what when where than these those such into upon "
    "about".split()
)


def script_language(sample: bytes) -> str:
    """The cheap guess alone: the script with the most letters in the first 1,000 bytes, as its
    most common language (Cyrillic = ru, Latin = en, ...); "unknown" without letters."""
    sample = sample[:SAMPLE_BYTES]
    latin = len(sample) - len(sample.translate(None, _LATIN_LETTERS))
    cyrillic = sample.count(b"\xd0") + sample.count(b"\xd1")  # most Cyrillic letters; all of Russian's
    if max(latin, 2 * cyrillic) * 2 > len(sample):  # mostly one of the two: no need to look further
        return "en" if latin > cyrillic else "ru"
    counts = {"en": latin}
    for lang, leads in _SCRIPTS:
        counts[lang] = sum(sample.count(lead) for lead in leads)
    if counts["ja"]:
        counts["ja"] += counts["zh"]  # Japanese mixes kana with Han
    lang, count = max(counts.items(), key=lambda item: item[1])
    return lang if count else "unknown"


def guess_language(sample: bytes) -> str:
    """The language of a row from the UTF-8 bytes of its start (the first 1,000 are read): the
    script's guess, and lingua's where that script is shared and the letters point elsewhere."""
    sample = sample[:SAMPLE_BYTES]
    lang = script_language(sample)
    if lang == "ru":
        # ә ғ қ ң ө ұ ү һ ... (lead bytes 0xd2, 0xd3) show without decoding; і ї є ў ј ... are searched for
        if b"\xd2" in sample or b"\xd3" in sample or _NOT_RUSSIAN.search(_decoded(sample)):
            return _detect("cyrillic", _decoded(sample)[:LINGUA_CHARS]) or lang
    elif lang == "en" and not sample.isascii() and _LATIN_ACCENTED.search(sample):
        text = _decoded(sample)[:LINGUA_CHARS]
        if not _looks_english(text):
            return _detect("latin", text) or lang
    return lang


def language_of(text: str) -> str:
    """`guess_language` for a str: the ISO 639-1 code of the text's language ("unknown" without letters)."""
    return guess_language(text[:SAMPLE_BYTES].encode("utf-8", "replace"))


def _decoded(sample: bytes) -> str:
    # The sample may end inside a character (cut at 1,000 bytes): that piece is dropped.
    return sample.decode("utf-8", "ignore")


def _looks_english(text: str) -> bool:
    words = _WORD.findall(text.lower())
    return bool(words) and 10 * sum(word in _ENGLISH_WORDS for word in words) >= len(words)


def _detect(script: str, text: str) -> str | None:
    found = _detector(script).detect_language_of(text)
    return found.iso_code_639_1.name.lower() if found is not None else None


@functools.cache
def _detector(script: str) -> Any:
    """lingua's detector for one script's languages, built on first use (its models load lazily)."""
    from lingua import Language, LanguageDetectorBuilder

    if script == "cyrillic":
        return LanguageDetectorBuilder.from_languages(*Language.all_with_cyrillic_script()).build()
    builder = LanguageDetectorBuilder.from_languages(*Language.all_with_latin_script())
    return builder.with_low_accuracy_mode().build()
