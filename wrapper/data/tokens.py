"""Token lengths in the training format, raw text cut into chunks that fit, and quantiles.

A row's length is counted as LLaMA-Factory will see it: the recipe's tokenizer, and the
chat template's tokens around every turn. Encoding each row through the template one by
one is slow (a Python call per turn), so contents are tokenized in batches by the fast
tokenizer and the template's overhead is measured once with LLaMA-Factory's own template
(first turn with the default or the row's system prompt, each later turn). Rows with
tools or function/observation turns are encoded exactly, through the template.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wrapper.data.formats import ASSISTANT, FUNCTION, OBSERVATION, USER, Row
from wrapper.prompts.training_format import TrainingFormat, training_format

LF_ROLES = {USER: "user", ASSISTANT: "assistant", FUNCTION: "function", OBSERVATION: "observation"}


class TokenCounter:
    """Counts rows in a training format fast: the format's exact count measured once per kind of turn."""

    def __init__(self, fmt: TrainingFormat, source: str):
        self.fmt = fmt
        self.source = source
        self.fast = fmt.tokenizer.backend_tokenizer
        self.eos = 1 if fmt.template.efficient_eos else 0
        a, b, s = "a", "b", "s"
        one = [(USER, a), (ASSISTANT, b)]
        base = self.count_piece(a) + self.count_piece(b)
        self.first_turn = self._exact(one, None, None) - base
        self.first_turn_own_system = self._exact(one, s, None) - base - self.count_piece(s)
        self.next_turn = self._exact(one + one, None, None) - self._exact(one, None, None) - base
        # Pre-training: LLaMA-Factory appends eos to each text (and bos where the tokenizer adds one).
        self.text_extra = 1 + (1 if getattr(fmt.tokenizer, "add_bos_token", False) else 0)

    @property
    def description(self) -> str:
        return f"tokens of {self.source} in the {self.fmt.name} training format"

    def count_piece(self, text: str) -> int:
        return len(self.fast.encode(text, add_special_tokens=False))

    def _exact(self, turns: list[tuple[str, str]], system: str | None, tools: str | None) -> int:
        messages = [{"role": LF_ROLES[role], "content": content} for role, content in turns]
        return self.fmt.count_conversation(messages, system, tools)

    def count_rows(self, rows: list[Row]) -> list[int]:
        """Tokens of each row in the training format (pre-training rows: the text plus eos)."""
        pieces = [piece for row in rows for piece in row.pieces]
        encode = getattr(self.fast, "encode_batch_fast", self.fast.encode_batch)
        sizes = iter([len(e) for e in encode(pieces, add_special_tokens=False)])
        counts = []
        for row in rows:
            lengths = [next(sizes) for _ in row.pieces]
            if row.text is not None:
                counts.append(lengths[0] + self.text_extra)
            elif row.tools or any(role not in (USER, ASSISTANT) for role, _ in row.turns):
                try:
                    counts.append(self._exact(row.turns, row.system, row.tools))
                except Exception:  # a function_call that isn't valid JSON: the template can't format it
                    counts.append(sum(lengths) + self.first_turn + self.next_turn * (len(row.turns) // 2 - 1))
            else:
                first = self.first_turn_own_system if row.system else self.first_turn
                counts.append(sum(lengths) + first + self.next_turn * (len(row.turns) // 2 - 1) + self.eos)
        return counts

    # --- raw text -------------------------------------------------------------------

    def chunk_limit(self, cutoff_len: int) -> int:
        """Tokens of text per chunk so that the chunk plus eos (and bos) fits cutoff_len."""
        return cutoff_len - self.text_extra

    def chunks(self, segments: Iterable[tuple[int, str]], limit: int, overlap: int) -> Iterator[tuple[int, str, int]]:
        """(first line, text, tokens) of chunks of at most `limit` tokens, cut at a paragraph,
        sentence or word end where one is near, consecutive chunks sharing `overlap` tokens."""
        return chunk_segments(self.fast, segments, limit, overlap)


def chunk_segments(
    fast, segments: Iterable[tuple[int, str]], limit: int, overlap: int
) -> Iterator[tuple[int, str, int]]:
    """TokenCounter.chunks with a bare `tokenizers.Tokenizer` (no chat template needed)."""
    return _Chunker(fast, limit, overlap).run(segments)


_SENTENCE_END = re.compile(r"[.!?…][\"'»”)\]]*\s*$")


class _Chunker:
    WINDOW_TOKENS_FACTOR = 8  # tokenize the pending text once it holds ~8 chunks' worth of characters

    def __init__(self, fast, limit: int, overlap: int):
        self.fast = fast
        self.limit = limit
        self.overlap = overlap
        self.text = ""
        self.marks: list[tuple[int, int]] = []  # (char offset, line) of each segment in self.text

    def run(self, segments: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str, int]]:
        window_chars = max(65536, self.limit * 4 * self.WINDOW_TOKENS_FACTOR)
        for line, segment in segments:
            if self.text:
                self.text += "\n\n"
            self.marks.append((len(self.text), line))
            self.text += segment
            if len(self.text) >= window_chars:
                yield from self._emit(final=False)
        if self.text.strip():
            yield from self._emit(final=True)
        self.text, self.marks = "", []

    def _line_at(self, offsets: list[int], offset: int) -> int:
        index = bisect.bisect_right(offsets, offset) - 1
        return self.marks[max(index, 0)][1]

    def _cut(self, starts: list[int], start: int, end: int) -> int:
        """The token index to end a chunk at: the best boundary in the last half of [start, end]."""
        text = self.text
        lowest = start + max(1, (end - start) // 2)
        for test in (
            lambda c: text.endswith("\n\n", 0, c) or text.startswith("\n\n", c),
            lambda c: bool(_SENTENCE_END.search(text, max(0, c - 8), c)),
            lambda c: text[c - 1 : c].isspace() or text[c : c + 1].isspace(),
        ):
            for k in range(end, lowest - 1, -1):
                if test(starts[k]):
                    return k
        return end

    def _overlap_start(self, starts: list[int], start: int, end: int) -> int:
        """Where the next chunk starts: `overlap` tokens before `end`, moved forward to a word start."""
        if not self.overlap:
            return end
        first = max(end - self.overlap, start + 1)
        for k in range(first, end):
            if self.text[starts[k] - 1 : starts[k]].isspace() or self.text[starts[k] : starts[k] + 1].isspace():
                return k
        return first

    def _emit(self, final: bool) -> Iterator[tuple[int, str, int]]:
        encoding = self.fast.encode(self.text, add_special_tokens=False)
        starts = [offset[0] for offset in encoding.offsets]
        total = len(starts)
        starts.append(len(self.text))
        offsets = [m[0] for m in self.marks]
        start = 0
        while True:
            remaining = total - start
            if final and remaining <= self.limit:
                piece = self.text[starts[start] :].strip()
                if piece:
                    yield self._line_at(offsets, starts[start]), piece, remaining
                break
            if not final and remaining <= 2 * self.limit:
                break  # keep the tail: what follows may change where it is best cut
            end = self._cut(starts, start, start + self.limit)
            piece = self.text[starts[start] : starts[end]].strip()
            if piece:
                yield self._line_at(offsets, starts[start]), piece, end - start
            start = self._overlap_start(starts, start, end)
        if not final:
            offset = starts[start]
            self.text = self.text[offset:]
            kept = [(pos - offset, line) for pos, line in self.marks if pos >= offset]
            before = [line for pos, line in self.marks if pos < offset]
            self.marks = ([(0, before[-1])] if before and (not kept or kept[0][0] > 0) else []) + kept


@dataclass
class Lengths:
    """A histogram of token lengths: exact quantiles in memory bounded by the distinct lengths."""

    counts: Counter

    @classmethod
    def empty(cls) -> Lengths:
        return cls(Counter())

    def add(self, length: int) -> None:
        self.counts[length] += 1

    def merge(self, other: Lengths) -> None:
        self.counts.update(other.counts)

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> int:
        """The smallest length L such that at least q of the rows are no longer than L."""
        need = q * self.n
        seen = 0
        for length in sorted(self.counts):
            seen += self.counts[length]
            if seen >= need - 1e-9:
                return length
        return 0

    def longer_than(self, limit: int) -> int:
        return sum(count for length, count in self.counts.items() if length > limit)

    def summary(self) -> dict:
        if not self.n:
            return {"rows": 0}
        return {
            "rows": self.n,
            "min": min(self.counts),
            "median": self.quantile(0.5),
            "p95": self.quantile(0.95),
            "p99": self.quantile(0.99),
            "max": max(self.counts),
        }


@functools.lru_cache(maxsize=4)
def load_counter(base_model: str, template: str, system: str | None) -> TokenCounter:
    """The recipe's tokenizer and template; raises with the reason when the tokenizer can't be loaded."""
    folder = str(tokenizer_dir(base_model))
    return TokenCounter(training_format(folder, template, system), folder)


@functools.lru_cache(maxsize=4)
def load_fast_tokenizer(base_model: str):
    """The model's tokenizer.json alone, as a `tokenizers.Tokenizer`: enough to cut text into
    chunks, in a fraction of a second (no transformers, no LLaMA-Factory). None without a
    tokenizer.json (a sentencepiece-only model): use load_counter then."""
    path = tokenizer_dir(base_model) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def tokenizer_dir(base_model: str) -> Path:
    """The folder with the model's tokenizer files; raises with the reason when there is none here."""
    path = Path(base_model)
    if not path.is_absolute():
        # A hub id: only from the local Hugging Face cache (no download, no retries when offline).
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_model, "tokenizer_config.json")
        if not isinstance(cached, str):
            raise OSError(
                f"not in the local Hugging Face cache; to count tokens, first run "
                f"`hf download {base_model} --include 'tokenizer*'`"
            )
        path = Path(cached).parent
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise OSError(f"no tokenizer files in {path}")
    return path
