"""`ftw data synth`: documents -> chunks -> the teacher's pairs -> checked rows, resumably.

Everything a run of it makes lives in runs/RUN/synth/:
  inputs.json     what the rows are made from (teacher, prompts, settings, documents),
                  written before the first request; a re-run with other inputs is refused
  journal.jsonl   one line per finished chunk (its facts, pairs, rewrites and rejects, tokens, time),
                  appended and flushed as each chunk finishes: a stop of any kind loses
                  at most the chunks in flight, and a torn last line is ignored
  synth.jsonl     the rows (ShareGPT, with source, chunk, chunk_tokens, teacher, lang; a phrasing of a
                  fact with its `fact`, a rewrite of a chunk without one), rebuilt from the
                  journal in document order after every run, so a resumed run and an
                  uninterrupted one write the same file
  rejects.jsonl   every document, chunk and pair that did not become a row, with why
  synth.json      counts per document and reason, settings, teacher, template hashes, time
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.progress import Progress

from wrapper.config.recipes import load_recipe
from wrapper.config.schema import Recipe, SynthSettings
from wrapper.core import stage
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.journal import Journal
from wrapper.core.paths import SYNTH_ROWS, display_path, runs_dir
from wrapper.core.stage import StageInputs, short_value
from wrapper.core.ui import count_progress, step
from wrapper.data.documents import Document, DocumentReject, read_documents
from wrapper.data.formats import near_key
from wrapper.data.langs import language_of
from wrapper.data.scan import recipe_chunker, recipe_counter
from wrapper.synth.filters import (
    Fact,
    Grounding,
    Pair,
    Rejected,
    check_fact,
    check_pair,
    check_rewrite,
    fact_grounding,
    parse_facts,
    parse_pairs,
    parse_rewrites,
    parse_score,
    same_phrasing,
)
from wrapper.synth.prompts import JUDGE_SCHEMA, Prompts, facts_schema, pairs_schema, rewrites_schema
from wrapper.synth.teachers import Teacher, TeacherDown, open_teacher

INPUTS, JOURNAL, REJECTS, SUMMARY = "inputs.json", "journal.jsonl", "rejects.jsonl", "synth.json"
FAILED_IN_A_ROW = 5  # chunks whose replies never parsed, one after another: the teacher can't do this
PARSE_ATTEMPTS = 3  # a reply that isn't the asked JSON is asked again, sampled, with another seed
RETRY_TEMPERATURE = 0.7
LANG_SAMPLE_CHARS = 2000
MAX_FACTS = 30  # facts asked of one chunk: a 512-token chunk states far fewer
# The user's turn of a document row (a rewrite of a chunk), by the row's language.
DOCUMENT_REQUEST = {
    "en": "What does {source} say?",
    "ru": "Что сказано в {source}?",
    "kk": "{source} ішінде не айтылған?",
}


@dataclass
class Chunk:
    id: str  # the document's sha256 (16 hex) and the chunk's number: the same on every run
    document: str
    source: str  # file:page or file:line where the chunk starts
    text: str
    tokens: int
    lang: str


@dataclass
class Job:
    """What one `ftw data synth` call works with."""

    run_dir: Path
    recipe: Recipe
    settings: SynthSettings
    teacher: Teacher
    prompts: Prompts
    thinking: bool  # cot rows wear <think>...</think> (the recipe's template is a reasoning one)
    parallel: int = 1
    limit: int | None = None

    @property
    def folder(self) -> Path:
        return self.run_dir / SYNTH_ROWS.parent


@dataclass
class Tally:
    chunks: int = 0
    done: int = 0
    failed: int = 0
    generated: int = 0
    kept: int = 0
    facts: int = 0  # --kind facts: the facts whose phrasings were asked
    documents: int = 0  # of the kept rows: rewrites of a chunk (document rows)
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)
    per_document: dict = field(default_factory=dict)


# ---- documents -> chunks ----------------------------------------------------------------------


def chunks_of(documents: list[Document], chunker: Callable, settings: SynthSettings) -> list[Chunk]:
    """Every document's chunks; chunker(segments, limit, overlap) is data.scan.recipe_chunker's."""
    chunks = []
    for doc in documents:
        pieces = chunker(doc.passages, settings.chunk_tokens, settings.chunk_overlap)
        for number, (place, text, tokens) in enumerate(pieces):
            chunks.append(
                Chunk(
                    id=f"{doc.sha256[:16]}:{number}",
                    document=doc.name,
                    source=doc.where(place),
                    text=text,
                    tokens=tokens,
                    lang=language_of(text[:LANG_SAMPLE_CHARS]),
                )
            )
    return chunks


def read_all(paths: list[Path]) -> tuple[list[Document], list[DocumentReject]]:
    documents, rejects = [], []
    for found in read_documents(paths):
        (documents if isinstance(found, Document) else rejects).append(found)
    return documents, rejects


# ---- the inputs, and refusing to mix two kinds of rows ---------------------------------------------


def asked_kinds(settings: SynthSettings) -> list[str]:
    """The templates one chunk is asked with: --kind facts asks three times over."""
    if settings.kind != "facts":
        return [settings.kind]
    return ["facts", "phrasings"] + (["rewrites"] if settings.rewrites else [])


def job_inputs(job: Job, documents: list[Document], template_names: list[str]) -> StageInputs:
    # the settings of the other kinds make no rows of this one: a run begun before they existed resumes
    unused = ("per_chunk",) if job.settings.kind == "facts" else ("phrasings", "rewrites")
    settings = {k: v for k, v in asdict(job.settings).items() if k not in ("docs", "templates", *unused)}
    values = {name: short_value(value) for name, value in settings.items()}
    values["teacher"] = job.teacher.id
    values["tokenizer"] = f"{job.recipe.model.base} ({job.recipe.model.template})"
    values["thinking_format"] = short_value(job.thinking)
    for name, digest in job.prompts.digests(template_names).items():
        values[f"template {name}"] = digest
    for doc in documents:
        values[f"document {doc.name}"] = doc.sha256[:16]
    return StageInputs("synth", values)


def check_inputs(job: Job, inputs: StageInputs, force: bool) -> None:
    changes = None if force else inputs.changes_from(stage.recorded_in_file(job.folder / INPUTS))
    if changes:
        raise stage.changed_inputs_refused(
            f"runs/{job.run_dir.name}/synth was begun",
            changes,
            "Resuming would mix two kinds of rows. Go back to the old inputs to resume, or start over (the rows "
            f"so far are dropped): ftw data synth ... --run {job.run_dir.name} --force",
        )


def start_over(job: Job) -> None:
    for name in (INPUTS, JOURNAL, REJECTS, SUMMARY, SYNTH_ROWS.name):
        (job.folder / name).unlink(missing_ok=True)


# ---- one chunk ----------------------------------------------------------------------------------


def ask(job: Job, chunk: Chunk) -> dict:
    """The journal entry of one chunk: every request of it (parse retries included) and its checked rows,
    so a resumed run asks a chunk again whole or not at all."""
    entry = {"chunk": chunk.id, "prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    started = time.monotonic()
    try:
        if job.settings.kind == "facts":
            entry.update(status="done", **ask_facts(job, chunk, entry))
        else:
            entry.update(status="done", **ask_pairs(job, chunk, entry))
    except Rejected as failed:  # the chunk's first request never gave the JSON asked for
        entry.update(status="failed", reason=failed.reason)
    entry["seconds"] = round(time.monotonic() - started, 3)
    return entry


def request(job: Job, entry: dict, prompt: str, schema: dict, parse: Callable[[str], list]) -> list:
    """parse(the teacher's reply), asked again (sampled, another seed) while it doesn't parse;
    Rejected("unparseable") after PARSE_ATTEMPTS requests."""
    settings, problem = job.settings, ""
    for attempt in range(PARSE_ATTEMPTS):
        temperature = settings.temperature if attempt == 0 else max(settings.temperature, RETRY_TEMPERATURE)
        messages = [{"role": "user", "content": prompt}]
        reply = job.teacher.complete(messages, schema, settings.max_tokens, temperature, settings.seed + attempt)
        _count(entry, reply)
        try:
            return parse(reply.text)
        except Rejected as rejected:
            problem = rejected.reason + (" (cut off at max_tokens)" if reply.truncated else "")
    raise Rejected("unparseable", f"unparseable after {PARSE_ATTEMPTS} requests: {problem}")


def answer_language(job: Job, chunk: Chunk) -> str:
    return job.settings.answer_language or chunk.lang


def ask_pairs(job: Job, chunk: Chunk, entry: dict) -> dict:
    """--kind qa, cot: one request for the chunk's pairs."""
    kind, count = job.settings.kind, job.settings.per_chunk
    prompt = job.prompts.ask(
        chunk.lang, kind, chunk=chunk.text, source=chunk.source, n=count, answer_language=answer_language(job, chunk)
    )
    pairs = request(job, entry, prompt, pairs_schema(kind, count), lambda text: parse_pairs(text, kind))
    return check_pairs(job, chunk, pairs[:count], Grounding(chunk.text), entry)


def ask_facts(job: Job, chunk: Chunk, entry: dict) -> dict:
    """--kind facts: the chunk's facts (one request), `phrasings` questions per grounded fact (one
    request each), then `rewrites` of the chunk (one request)."""
    settings, lang = job.settings, chunk.lang
    values = {"source": chunk.source, "answer_language": answer_language(job, chunk)}
    prompt = job.prompts.ask(lang, "facts", chunk=chunk.text, **values)
    found = request(job, entry, prompt, facts_schema(MAX_FACTS), parse_facts)[:MAX_FACTS]
    grounding = Grounding(chunk.text)
    facts, pairs, rejects = [], [], []
    for number, (text, support) in enumerate(found):
        fact = Fact(f"{chunk.id}:f{number}", text, support)
        try:
            check_fact(fact, grounding, settings)
            prompt = job.prompts.ask(lang, "phrasings", fact=text, support=support, n=settings.phrasings, **values)
            schema = pairs_schema("qa", settings.phrasings)
            asked = request(job, entry, prompt, schema, lambda reply: parse_pairs(reply, "qa"))
        except Rejected as why:
            rejects.append({"kind": why.kind, "reason": why.reason, "fact": fact.as_dict()})
            continue
        facts.append(fact.as_dict())
        checked = check_pairs(job, chunk, asked[: settings.phrasings], fact_grounding(fact), entry, fact.id)
        pairs += checked["pairs"]
        rejects += checked["rejects"]
    rewrites = ask_rewrites(job, chunk, entry, grounding, rejects)
    return {"facts": facts, "pairs": pairs, "rejects": rejects, "rewrites": rewrites}


def ask_rewrites(job: Job, chunk: Chunk, entry: dict, grounding: Grounding, rejects: list[dict]) -> list[str]:
    """The chunk told again, checked against it; what fails goes to `rejects`."""
    count = job.settings.rewrites
    if not count:
        return []
    prompt = job.prompts.ask(
        chunk.lang,
        "rewrites",
        chunk=chunk.text,
        source=chunk.source,
        n=count,
        answer_language=answer_language(job, chunk),
    )
    try:
        texts = request(job, entry, prompt, rewrites_schema(count), parse_rewrites)[:count]
    except Rejected as why:
        rejects.append({"kind": why.kind, "reason": why.reason, "rewrite": None})
        return []
    kept = []
    for text in texts:
        try:
            check_rewrite(text, grounding)
            kept.append(text)
        except Rejected as why:
            rejects.append({"kind": why.kind, "reason": why.reason, "rewrite": text})
    return kept


def check_pairs(
    job: Job, chunk: Chunk, pairs: list[Pair], grounding: Grounding, entry: dict, fact: str | None = None
) -> dict:
    """Each pair checked against `grounding` (the chunk; a phrasing's: its fact); the phrasings of
    one `fact` also against each other."""
    kept, rejected, questions = [], [], []
    for pair in pairs:
        found = pair.as_dict() | ({"fact": fact} if fact else {})
        try:
            check_pair(pair, grounding, job.settings)
            if fact and (same := same_phrasing(pair.question, questions)):
                raise Rejected("near_duplicate_phrasing", f"nearly the same question as {same!r}")
            if job.settings.judge:
                score = judge(job, chunk, pair, entry)
                if score < job.settings.min_score:
                    raise Rejected("low_score", f"the judge scored it {score} (min_score {job.settings.min_score})")
            kept.append(found)
            questions.append(pair.question)
        except Rejected as why:
            rejected.append({"kind": why.kind, "reason": why.reason, "pair": found})
    return {"pairs": kept, "rejects": rejected}


def judge(job: Job, chunk: Chunk, pair: Pair, entry: dict) -> int:
    prompt = job.prompts.judge(chunk=chunk.text, question=pair.question, answer=pair.answer)
    problem = ""
    for attempt in range(PARSE_ATTEMPTS):
        temperature = 0.0 if attempt == 0 else RETRY_TEMPERATURE
        reply = job.teacher.complete(
            [{"role": "user", "content": prompt}], JUDGE_SCHEMA, 16, temperature, job.settings.seed + attempt
        )
        _count(entry, reply)
        try:
            return parse_score(reply.text)
        except Rejected as rejected:
            problem = rejected.reason
    raise Rejected("unparseable", f"no score after {PARSE_ATTEMPTS} requests: {problem}")


def _count(entry: dict, reply) -> None:
    entry["requests"] += 1
    entry["prompt_tokens"] += reply.prompt_tokens
    entry["completion_tokens"] += reply.completion_tokens


# ---- the loop -----------------------------------------------------------------------------------


def generate(job: Job, todo: list[Chunk], journal: Journal) -> None:
    """Asks for every chunk of `todo`, `job.parallel` at a time, journaling each as it finishes."""
    with count_progress() as progress:
        task = progress.add_task("synthesizing", total=len(todo), rate="")
        meter = Meter(progress, task, job.teacher)
        if job.parallel == 1:  # in this thread: a Ctrl-C stops it between two tokens
            for chunk in todo:
                meter.finished(journal, ask(job, chunk))
            return
        ask_in_parallel(job, todo, journal, meter)


def ask_in_parallel(job: Job, todo: list[Chunk], journal: Journal, meter: Meter) -> None:
    """Daemon threads, one per request in flight: a stop doesn't wait for the replies in flight
    (the journal has every finished chunk; those are asked again by the next run)."""
    results: queue.Queue = queue.Queue()

    def work(chunk: Chunk) -> None:
        try:
            results.put((ask(job, chunk), None))
        except BaseException as exc:  # handed to the main thread, which stops
            results.put((None, exc))

    waiting, in_flight = iter(todo), 0
    while True:
        while in_flight < job.parallel and (chunk := next(waiting, None)) is not None:
            threading.Thread(target=work, args=(chunk,), daemon=True).start()
            in_flight += 1
        if not in_flight:
            return
        entry, error = results.get()
        in_flight -= 1
        if error is not None:
            raise error  # a TeacherDown stops here; the journal has the rest
        meter.finished(journal, entry)


class Meter:
    """Journals each finished chunk, shows chunks/s and generated tokens/s, and stops a teacher
    that answers nothing usable chunk after chunk (a base model, a wrong endpoint)."""

    def __init__(self, progress: Progress, task, teacher: Teacher):
        self.progress, self.task, self.teacher = progress, task, teacher
        self.started, self.count, self.tokens = time.monotonic(), 0, 0
        self.failed_in_a_row = 0

    def finished(self, journal: Journal, entry: dict) -> None:
        journal.append(entry)
        self.failed_in_a_row = self.failed_in_a_row + 1 if entry["status"] == "failed" else 0
        if self.failed_in_a_row >= FAILED_IN_A_ROW:
            raise TeacherDown(
                f"the teacher ({self.teacher.where}) answered {FAILED_IN_A_ROW} chunks in a row without the "
                f"JSON asked for; the last: {entry['reason']}. Is it an instruct model? Try another teacher "
                "(with --force), or re-run to go on: the failed chunks are counted, not asked again."
            )
        self.count += 1
        self.tokens += entry["completion_tokens"]
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = f"{self.count / elapsed:.2f} chunks/s, {self.tokens / elapsed:.0f} tok/s"
        self.progress.update(self.task, advance=1, rate=rate)


# ---- journal -> rows --------------------------------------------------------------------------------


def assistant_text(job: Job, pair: dict) -> str:
    if "reasoning" not in pair:
        return pair["answer"]
    if job.thinking:
        return f"<think>\n{pair['reasoning']}\n</think>\n\n{pair['answer']}"
    return f"{pair['reasoning']}\n\n{pair['answer']}"


def assemble(job: Job, chunks: list[Chunk], entries: dict[str, dict], doc_rejects: list[DocumentReject]) -> Tally:
    """synth.jsonl and rejects.jsonl from the journal, in document order, duplicates dropped."""
    tally = Tally()
    rows, rejects = [], [{"source": r.name, "kind": r.kind, "reason": r.reason} for r in doc_rejects]
    tally.reasons.update(r.kind for r in doc_rejects)
    seen: dict[tuple[str, str], str] = {}
    for chunk in chunks:
        entry = entries.get(chunk.id)
        if entry is None:
            continue
        counts = tally.per_document.setdefault(chunk.document, Counter())
        tally.chunks += 1
        counts["chunks"] += 1
        tally.prompt_tokens += entry["prompt_tokens"]
        tally.seconds += entry["seconds"]
        tally.completion_tokens += entry["completion_tokens"]
        if entry["status"] == "failed":
            tally.failed += 1
            counts["failed"] += 1
            tally.reasons["chunk_failed"] += 1
            rejects.append(
                {"source": chunk.source, "chunk": chunk.id, "kind": "chunk_failed", "reason": entry["reason"]}
            )
            continue
        tally.done += 1
        rewrites = entry.get("rewrites", [])
        generated = len(entry["pairs"]) + len(entry["rejects"]) + len(rewrites)
        tally.generated += generated
        counts["generated"] += generated
        tally.facts += len(entry.get("facts", []))
        for reject in entry["rejects"]:
            rejects.append({"source": chunk.source, "chunk": chunk.id, **reject})
            _reject(tally, counts, reject["kind"])
        for pair in entry["pairs"]:
            exact, near = f"{pair['question']}\x1e{pair['answer']}", near_key(pair["question"] + " " + pair["answer"])
            first = seen.get(("exact", exact)) or seen.get(("near", near))
            if first:
                kind = "exact_duplicate" if ("exact", exact) in seen else "near_duplicate"
                rejects.append(
                    {
                        "source": chunk.source,
                        "chunk": chunk.id,
                        "kind": kind,
                        "reason": f"duplicate of a row from {first}",
                        "pair": pair,
                    }
                )
                _reject(tally, counts, kind)
                continue
            seen[("exact", exact)] = seen[("near", near)] = chunk.source
            rows.append(row_of(job, chunk, pair))
            tally.kept += 1
            counts["kept"] += 1
        for text in rewrites:
            rows.append(document_row(job, chunk, text))
            tally.kept += 1
            tally.documents += 1
            counts["kept"] += 1
    if tally.chunks != tally.done + tally.failed or tally.generated != tally.kept + tally.rejected:
        raise FtwError(
            f"internal error: chunks read {tally.chunks} != done {tally.done} + failed {tally.failed}, or rows "
            f"generated {tally.generated} != kept {tally.kept} + rejected {tally.rejected}; nothing was written"
        )
    _write_jsonl(job.folder / SYNTH_ROWS.name, rows)
    _write_jsonl(job.folder / REJECTS, rejects)
    return tally


def _reject(tally: Tally, counts: Counter, kind: str) -> None:
    tally.rejected += 1
    tally.reasons[kind] += 1
    counts["rejected"] += 1
    counts[f"rejected {kind}"] += 1


def row_of(job: Job, chunk: Chunk, pair: dict) -> dict:
    """A question's row; a phrasing of a fact names it (`fact`), which `ftw data prepare` probes by."""
    return conversation_row(job, chunk, pair["question"], assistant_text(job, pair)) | (
        {"fact": pair["fact"]} if "fact" in pair else {}
    )


def document_row(job: Job, chunk: Chunk, text: str) -> dict:
    """A rewrite of a chunk: a row with `chunk` and no `fact`, which trains and is held out with its chunk."""
    asked = DOCUMENT_REQUEST.get(answer_language(job, chunk), DOCUMENT_REQUEST["en"])
    return conversation_row(job, chunk, asked.format(source=chunk.source), text)


def conversation_row(job: Job, chunk: Chunk, question: str, answer: str) -> dict:
    return {
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        "source": chunk.source,
        "chunk": chunk.id,
        "chunk_tokens": chunk.tokens,  # the source's length, for prepare's synthetic-to-source token ratio
        "teacher": job.teacher.id,
        "lang": job.settings.answer_language or chunk.lang,
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# ---- the command ----------------------------------------------------------------------------------


@dataclass
class Synthesized:
    """What `ftw data synth` made, for its summary."""

    tally: Tally
    not_asked: int  # chunks left out by --limit
    parallel: int
    folder: Path  # runs/RUN/synth
    recipe: str
    run: str


def synthesize(job: Job, paths: list[Path], chunker: Callable, force: bool) -> Synthesized:
    documents, doc_rejects = read_all(paths)
    for reject in doc_rejects:
        step(f"  [yellow]skipped[/yellow] {escape(reject.name)}: {escape(reject.reason)}")
    if not documents:
        raise FtwError(f"no readable documents in {', '.join(display_path(p) for p in paths)} (see the lines above)")
    chunks = chunks_of(documents, chunker, job.settings)
    names = sorted({job.prompts.name_for(c.lang, kind) for c in chunks for kind in asked_kinds(job.settings)})
    inputs = job_inputs(job, documents, names + (["judge.j2"] if job.settings.judge else []))
    job.folder.mkdir(parents=True, exist_ok=True)
    check_inputs(job, inputs, force)
    if force:
        start_over(job)
    stage.record_in_file(job.folder / INPUTS, inputs)
    scope = chunks[: job.limit] if job.limit else chunks
    journal = Journal(job.folder / JOURNAL, "chunk")
    todo = [chunk for chunk in scope if chunk.id not in journal]
    langs = Counter(chunk.lang for chunk in chunks)
    step(
        f"{len(documents)} document(s), {len(chunks)} chunk(s) of ≤{job.settings.chunk_tokens} tokens "
        f"({', '.join(f'{k} {v}' for k, v in langs.most_common())}); "
        + (f"{len(scope) - len(todo)} done before, " if len(todo) < len(scope) else "")
        + f"{len(todo)} to ask {escape(job.teacher.where)}"
        + (f" (--limit {job.limit})" if job.limit else "")
    )
    try:
        generate(job, todo, journal)
    finally:
        journal.close()
    entries = journal.entries
    tally = assemble(job, scope, entries, doc_rejects)
    summary = summary_of(job, inputs, documents, doc_rejects, chunks, scope, tally)
    write_text_atomic(job.folder / SUMMARY, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    return Synthesized(tally, len(chunks) - len(scope), job.parallel, job.folder, job.recipe.name, job.run_dir.name)


def summary_of(job, inputs, documents, doc_rejects, chunks, scope, tally: Tally) -> dict:
    return {
        "run": job.run_dir.name,
        "recipe": job.recipe.name,
        "teacher": job.teacher.id,
        "settings": asdict(job.settings),
        "parallel": job.parallel,
        "inputs": inputs.values,
        "documents": [
            {
                "path": str(d.path),
                "sha256": d.sha256,
                "kind": d.kind,
                "notes": d.notes,
                **tally.per_document.get(d.name, {}),
            }
            for d in documents
        ],
        "rejected_documents": [asdict(r) for r in doc_rejects],
        "counts": {
            "chunks_total": len(chunks),
            "chunks_in_scope": len(scope),
            "chunks_read": tally.chunks,
            "chunks_done": tally.done,
            "chunks_failed": tally.failed,
            "rows_generated": tally.generated,
            "rows_kept": tally.kept,
            "facts": tally.facts,
            "document_rows": tally.documents,
            "rows_rejected": tally.rejected,
            "documents_rejected": len(doc_rejects),
            "rejected_by_kind": dict(tally.reasons),
        },
        "tokens": {"prompt": tally.prompt_tokens, "completion": tally.completion_tokens},
        # summed over chunks: with --parallel N, requests overlap and this exceeds the wall time
        "request_seconds": round(tally.seconds, 1),
        "files": {name: str(job.folder / name) for name in (SYNTH_ROWS.name, REJECTS, JOURNAL)},
    }


def thinking_template(recipe: Recipe) -> bool:
    """LLaMA-Factory's reasoning templates (qwen3, deepseekr1, ...) train on <think>...</think>."""
    counter, why_not = recipe_counter(recipe)
    if counter is None:
        raise FtwError(f"--kind cot writes rows in the recipe's chat template: {why_not}")
    return counter.fmt.reasoning and counter.fmt.template.enable_thinking is not False


def synthesize_run(
    recipe_name: str,
    docs: list[str],
    teacher_spec: str,
    teacher_model: str | None,
    run: str,
    parallel: int,
    limit: int | None,
    force: bool,
    overrides: list[str],
) -> Synthesized:
    """`ftw data synth`: everything checked that can be (recipe, documents, tokenizer) before the
    teacher is loaded or asked."""
    recipe = load_recipe(recipe_name, overrides)
    settings = recipe.synth
    if docs:
        paths = [Path(p).expanduser().resolve() for p in docs]
    elif settings.docs:
        paths = [(recipe.folder / p).resolve() for p in settings.docs]
    else:
        raise FtwError(f"no documents: give --docs PATH, or list them under synth.docs in {recipe.doc.path}")
    chunker, why_not = recipe_chunker(recipe)
    if chunker is None:
        raise FtwError(f"documents are cut into chunks with the recipe's tokenizer: {why_not}")
    own = (recipe.folder / settings.templates).resolve() if settings.templates else None
    teacher = open_teacher(teacher_spec, teacher_model)
    if parallel > 1 and not teacher.parallel_ok:
        step(f"  --parallel {parallel}: a GGUF in this process answers one request at a time; using 1")
        parallel = 1
    job = Job(
        run_dir=runs_dir() / run,
        recipe=recipe,
        settings=settings,
        teacher=teacher,
        prompts=Prompts(own),
        thinking=settings.kind == "cot" and thinking_template(recipe),
        parallel=parallel,
        limit=limit,
    )
    return synthesize(job, paths, chunker, force)
