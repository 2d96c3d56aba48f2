"""`ftw data synth`, the parts that need no teacher: chunks and their places, the filters, the
Ollama store, the journal, and `ftw data prepare` keeping each chunk on one side of the split.
The teachers themselves are in tests/test_synth_teachers.py (a real server, a real GGUF)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wrapper.config.recipes import load_recipe
from wrapper.config.schema import SynthSettings
from wrapper.core.journal import read_entries
from wrapper.data.documents import read_documents
from wrapper.data.scan import recipe_chunker, recipe_counter
from wrapper.synth import teachers
from wrapper.synth.filters import Grounding, Pair, Rejected, check_pair, parse_pairs, parse_score
from wrapper.synth.job import assistant_text, chunks_of
from wrapper.synth.prompts import Prompts, pairs_schema
from wrapper.synth.teachers import ollama_blob

from tests.support.documents import make_docx, make_text, make_text_pdf, make_vtt
from tests.support.runner import ftw_in_process
from tests.support.teacher import StubModel, serving

PAGES = [  # ~40 tokens each: with 64-token chunks, no two pages share a chunk
    "The Amber Gate is guarded by Orlen Vask.\nHe has kept the gate for forty years.\n"
    "Travellers show a copper token stamped with the royal owl.",
    "Moon steel is gathered only on nights of the full moon,\nin the mines of Karth Hollow.\n"
    "Each blade is tempered in snow water and glows in the dark.",
    "Duskmere stands on three terraces above the Silver Lake.\nIt was founded in the year 812.\n"
    "Queen Ilvara the Patient united the valley clans there.",
]
RU_LINES = [
    "В Северных горах живёт дракон Мирогаст.",
    "Он спит в пещере над ледником Белый Рог и просыпается раз в семь лет.",
    "",
    "Мечи стражей Велории куют из лунной стали.",
]
CHUNK_RU = (
    "Мечи стражей Велории куют из лунной стали. Руду добывают только в ночи полнолуния в шахтах "
    "Карт-Холлоу, а каждый клинок закаляют в снеговой воде. Статья 14 Устава стражи, принятого в 812 году."
)


@pytest.fixture(scope="module")
def chunker():
    found, why_not = recipe_chunker(load_recipe("demo-docs"))
    assert found is not None, why_not
    return found


def test_the_light_chunker_cuts_as_the_token_counter_does(chunker):
    counter, _ = recipe_counter(load_recipe("demo-docs"))
    segments = [(1, "\n".join(RU_LINES)), (7, " ".join(PAGES) * 3)]
    assert list(chunker(segments, 64, 8)) == list(counter.chunks(segments, 64, 8))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_text(path, text)


def documents(folder: Path) -> list:
    make_text_pdf(folder / "gate.pdf", PAGES)
    make_docx(folder / "guard.docx", ["Устав стражи Велории.", "Стражи носят мечи из лунной стали."])
    make_text(folder / "north.txt", "\n".join(RU_LINES) + "\n")
    make_vtt(folder / "talk.vtt", [(1, 4, "Welcome to the council."), (4.5, 9, "Today we speak about the gate.")])
    return list(read_documents([folder]))


def test_every_chunk_starts_on_the_page_or_line_its_source_names(tmp_path, chunker):
    docs = documents(tmp_path)
    settings = SynthSettings(chunk_tokens=64, chunk_overlap=0)
    chunks = chunks_of(docs, chunker, settings)
    by_name = {doc.name: doc for doc in docs}
    assert {c.document for c in chunks} == set(by_name)
    for chunk in chunks:
        name, _, place = chunk.source.rpartition(":")
        passages = dict(by_name[name].passages)
        assert chunk.text[:20] in passages[int(place)], (chunk.source, chunk.text[:40])
    pdf = [c for c in chunks if c.document.endswith("gate.pdf")]
    assert [c.source.rsplit(":", 1)[1] for c in pdf] == ["1", "2", "3"]
    ru = [c for c in chunks if c.document.endswith("north.txt")]
    assert ru[0].source.endswith("north.txt:1") and ru[0].lang == "ru"
    assert next(c for c in chunks if c.document.endswith("talk.vtt")).lang == "en"


def test_chunk_ids_are_the_same_on_every_run_and_differ_between_documents(tmp_path, chunker):
    first = chunks_of(documents(tmp_path), chunker, SynthSettings(chunk_tokens=64, chunk_overlap=0))
    again = chunks_of(list(read_documents([tmp_path])), chunker, SynthSettings(chunk_tokens=64, chunk_overlap=0))
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)


def test_the_grounding_filter_rejects_a_planted_ungrounded_answer():
    grounding = Grounding(CHUNK_RU)
    settings = SynthSettings()
    grounded = Pair(
        "Из чего куют мечи стражей?", "Мечи стражей Велории куют из лунной стали, закаляя клинок в снеговой воде."
    )
    check_pair(grounded, grounding, settings)  # inflected forms (стражей, клинок) count as the chunk's words
    planted = {
        "a number": Pair("Когда принят устав?", "Устав стражи был принят в 815 году, по статье 14."),
        "a name": Pair("Кто куёт мечи?", "Мечи стражей куёт мастер Торвальд из лунной стали."),
        "content": Pair(
            "Что добывают в шахтах?", "В шахтах добывают золото, серебро и драгоценные изумруды для короны."
        ),
    }
    for what, pair in planted.items():
        with pytest.raises(Rejected) as caught:
            check_pair(pair, grounding, settings)
        assert caught.value.kind == "ungrounded", what
    assert "815" in str(pytest.raises(Rejected, check_pair, planted["a number"], grounding, settings).value)


def test_the_other_filters_say_why():
    grounding = Grounding(CHUNK_RU)
    settings = SynthSettings(min_answer_chars=20, max_answer_chars=200)
    cases = {
        "empty": Pair("", "Мечи стражей Велории куют из лунной стали."),
        "too_short": Pair("Из чего мечи?", "Из стали."),
        "too_long": Pair("Из чего мечи?", "Мечи стражей куют из лунной стали. " * 10),
        "copied_question": Pair(
            "Мечи стражей Велории куют из лунной стали.", "Мечи стражей Велории куют из лунной стали."
        ),
    }
    for kind, pair in cases.items():
        with pytest.raises(Rejected) as caught:
            check_pair(pair, grounding, settings)
        assert caught.value.kind == kind


def test_questions_that_lean_on_the_excerpt_are_rejected_in_three_languages():
    settings = SynthSettings()
    grounding = Grounding(CHUNK_RU + " " + PAGES[0])
    answer_ru, answer_en = "Мечи стражей Велории куют из лунной стали.", "Orlen Vask guards the Amber Gate."
    leaning = [
        Pair("Who guards the gate, according to the text?", answer_en),
        Pair("What does this article say about the Amber Gate?", answer_en),
        Pair("Who is the guard mentioned above?", answer_en),
        Pair("Из чего, согласно данному фрагменту, куют мечи?", answer_ru),
        Pair("Что сказано в тексте о мечах стражей?", answer_ru),
        Pair("Из чего куют мечи, упомянутые выше?", answer_ru),
        Pair("Мәтінде семсерлер неден соғылады делінген?", answer_ru),
        Pair("Осы бапта не айтылған?", answer_ru),
        Pair("Үзіндіде кім туралы айтылады?", answer_ru),
    ]
    for pair in leaning:
        with pytest.raises(Rejected) as caught:
            check_pair(pair, grounding, settings)
        assert caught.value.kind == "not_standalone", pair.question
    standing = [
        Pair("Who guards the Amber Gate?", answer_en),
        Pair("Which document must travellers show at the Amber Gate?", "Travellers show a copper token."),
        Pair("Что сказано в статье 14 Устава стражи о мечах?", answer_ru),
        Pair("Какой текст у клятвы стражей Велории?", answer_ru),
        Pair("Велория стражтарының семсерлері неден соғылады?", answer_ru),
    ]
    for pair in standing:
        check_pair(pair, grounding, settings)
    for lang in ("en", "ru", "kk"):
        for kind in ("qa", "cot"):
            prompt = Prompts(None).ask(lang, kind, chunk="x", source="a.txt:1", n=2, answer_language=lang)
            assert any(word in prompt for word in ("stand alone", "сам по себе", "өз алдына")), (lang, kind)


def test_replies_parse_from_json_prose_or_fences_and_garbage_is_unparseable():
    pair = {"question": "Who guards the gate?", "answer": "Orlen Vask guards it."}
    for text in (
        json.dumps({"pairs": [pair]}),
        "Here you go:\n```json\n" + json.dumps({"pairs": [pair]}) + "\n```",
        json.dumps([pair]),
        json.dumps(pair),
        "<think>\nThe user wants {pairs}.\n</think>\n" + json.dumps({"pairs": [pair]}),
    ):
        assert parse_pairs(text, "qa") == [Pair(pair["question"], pair["answer"])]
    for text in ("", "I cannot do that.", '{"pairs": [{"question": 1}]}', '{"pairs": []}'):
        with pytest.raises(Rejected) as caught:
            parse_pairs(text, "qa")
        assert caught.value.kind == "unparseable"
    with pytest.raises(Rejected):
        parse_pairs(json.dumps({"pairs": [pair]}), "cot")  # no reasoning
    assert parse_score('{"score": 4}') == 4
    with pytest.raises(Rejected):
        parse_score('{"score": 9}')


def test_cot_rows_think_in_thinking_templates_and_reason_plainly_otherwise():
    pair = {"question": "q", "reasoning": "step 1; step 2", "answer": "a"}

    class JobLike:
        thinking = True

    assert assistant_text(JobLike, pair) == "<think>\nstep 1; step 2\n</think>\n\na"
    JobLike.thinking = False
    assert assistant_text(JobLike, pair) == "step 1; step 2\n\na"
    assert assistant_text(JobLike, {"question": "q", "answer": "a"}) == "a"


def test_prompts_follow_the_chunk_language_and_fall_back_to_english(tmp_path):
    prompts = Prompts(None)
    values = dict(chunk="текст", source="a.txt:1", n=2, answer_language="kk")
    assert "Үзінді" in prompts.ask("kk", "qa", **values)
    assert "Фрагмент" in prompts.ask("ru", "cot", **values) and "казахском" in prompts.ask("ru", "cot", **values)
    assert prompts.name_for("de", "qa") == "en/qa.j2"
    own = tmp_path / "mine"
    write(own / "ru" / "qa.j2", "Мой вопрос по {{ source }}: {{ chunk }}")
    mine = Prompts(own)
    assert mine.ask("ru", "qa", **values) == "Мой вопрос по a.txt:1: текст"
    assert "Excerpt" in mine.ask("en", "qa", **values)  # the rest stays shipped
    digests = mine.digests(["ru/qa.j2", "en/qa.j2"])
    assert "mine/ru/qa.j2" in digests["ru/qa.j2"] and "templates/synth/en/qa.j2" in digests["en/qa.j2"]
    schema = pairs_schema("cot", 3)
    assert schema["properties"]["pairs"]["maxItems"] == 3
    assert schema["properties"]["pairs"]["items"]["required"] == ["question", "reasoning", "answer"]


def ollama_store(root: Path, weights: bytes = b"GGUF fake weights") -> Path:
    """A store laid out as Ollama lays it: manifests/HOST/NAMESPACE/MODEL/TAG and blobs/sha256-HEX."""
    import hashlib

    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    layers = []
    for media, data in (
        ("application/vnd.ollama.image.model", weights),
        ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
        ("application/vnd.ollama.image.params", b'{"temperature": 0.2}'),
    ):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        layers.append({"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)})
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:0", "size": 2}
    manifest = {"schemaVersion": 2, "config": config, "layers": layers}
    for path in ("registry.ollama.ai/library/qwen3/8b", "registry.ollama.ai/someone/lore/latest"):
        write(root / "manifests" / path, json.dumps(manifest))
    return blobs / f"sha256-{layers[0]['digest'].split(':')[1]}"


def test_an_ollama_model_name_resolves_to_its_weights_blob(tmp_path, monkeypatch):
    blob = ollama_store(tmp_path / "models")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    assert ollama_blob("qwen3:8b") == blob
    assert ollama_blob("someone/lore") == blob  # no tag: latest
    with pytest.raises(Exception, match="ollama pull qwen3:14b"):
        ollama_blob("qwen3:14b")


def test_a_torn_journal_line_is_dropped_and_cut_off(tmp_path):
    journal = tmp_path / "journal.jsonl"
    journal.write_text('{"chunk": "a:0", "status": "done"}\n{"chunk": "a:1", "sta', encoding="utf-8")
    assert list(read_entries(journal, "chunk")) == ["a:0"]
    assert journal.read_text(encoding="utf-8") == '{"chunk": "a:0", "status": "done"}\n'


def synth_row(chunk: str, number: int, lang: str = "en") -> dict:
    return {
        "conversations": [
            {"from": "human", "value": f"Question {number} about chunk {chunk}?"},
            {"from": "gpt", "value": f"The answer {number} from chunk {chunk}."},
        ],
        "source": f"book.pdf:{chunk}",
        "chunk": f"abc:{chunk}",
        "teacher": "test",
        "lang": lang,
    }


def test_prepare_takes_the_synthesized_rows_and_never_splits_a_chunk(runs_dir):
    rows = [synth_row(str(c), n) for c in range(30) for n in range(3)]
    synth = runs_dir / "docs" / "synth" / "synth.jsonl"
    write(synth, "".join(json.dumps(r) + "\n" for r in rows))
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo-docs", "--run", "docs")
    assert code == 0, out
    sides = {}
    for side in ("train", "val"):
        for line in (runs_dir / "docs" / "data" / f"{side}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            sides.setdefault(row["chunk"], set()).add(side)
            assert row["document"].startswith("book.pdf:")
    assert all(len(s) == 1 for s in sides.values()), "a chunk has rows on both sides"
    assert {"train"} in sides.values() and {"val"} in sides.values()
    assert sum(len(s) for s in sides.values()) == 30


def test_prepare_without_data_or_synthesized_rows_says_what_to_run(runs_dir):
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo-docs", "--run", "empty")
    assert code == 2
    assert "ftw data synth --recipe demo-docs --run empty" in out


def test_synth_refuses_bad_settings_before_loading_anything(runs_dir):
    code, out = ftw_in_process(
        "data",
        "synth",
        "--recipe",
        "demo-docs",
        "--teacher",
        "x.gguf",
        "--run",
        "r",
        "--set",
        "synth.min_grounding=2",
    )
    assert code == 2 and "min_grounding must be a share between 0 and 1" in out
    code, out = ftw_in_process("data", "synth", "--recipe", "demo-docs", "--teacher", "nowhere.gguf", "--run", "r")
    assert code == 2 and "--teacher 'nowhere.gguf': no such file" in out


class PoliteRefuser(StubModel):
    """A model that never writes the JSON asked for."""

    model = "refuser"

    def answer(self, prompt: str) -> str:
        return "I am sorry, I can't help with that."


def test_a_teacher_that_never_answers_in_json_is_stopped_with_its_url(runs_dir):
    with serving(PoliteRefuser) as url:
        code, out = ftw_in_process(
            "data", "synth", "--recipe", "demo-docs", "--teacher", url, "--run", "g", "--parallel", "2"
        )
    assert code == 1
    assert f"the teacher ({url}) answered 5 chunks in a row without the JSON asked for" in out
    journal = [
        json.loads(line)
        for line in (runs_dir / "g" / "synth" / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(journal) == 5 and {e["status"] for e in journal} == {"failed"}
    assert all(e["requests"] == 3 and "no JSON in the reply" in e["reason"] for e in journal)


class JudgingTeacher(StubModel):
    """Writes two pairs per excerpt (its first line asked about, and a vague one) and, as judge,
    scores a pair 5 when its answer is a line of the excerpt, else 2."""

    model = "judging"
    judged: list[str] = []

    def answer(self, prompt: str) -> str:
        if 'JSON only: {"score"' in prompt:
            answer = prompt.rsplit("Answer: ", 1)[1].strip()
            type(self).judged.append(answer)
            return json.dumps({"score": 5 if answer in excerpt_lines(prompt) else 2})
        line = excerpt_lines(prompt)[0]
        vague = {"question": f"Why does {line.split()[0]} matter so much?", "answer": "It matters a lot, truly."}
        return json.dumps({"pairs": [{"question": f"What is true of {line.split()[0]}?", "answer": line}, vague]})


def test_the_judge_scores_every_pair_that_passes_the_filters_and_low_scores_are_rejected(runs_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_text_pdf(docs / "gate.pdf", PAGES)
    JudgingTeacher.judged = []
    with serving(JudgingTeacher) as url:
        code, out = ftw_in_process(
            "data", "synth", "--recipe", "demo-docs", "--docs", str(docs), "--teacher", url, "--run", "judged",
            "--kind", "qa", "--judge", "--set", "synth.chunk_tokens=64", "--set", "synth.chunk_overlap=0",
            "--set", "synth.min_grounding=0", "--set", "synth.min_answer_chars=1", "--set", "synth.min_score=3",
        )  # fmt: skip
    assert code == 0, out
    folder = runs_dir / "judged" / "synth"
    journal = jsonl_of(folder / "journal.jsonl")
    assert len(journal) == 3  # one chunk per page
    # one request for the pairs, one per pair for its score
    assert [e["requests"] for e in journal] == [3, 3, 3] and len(JudgingTeacher.judged) == 6
    assert all(len(e["pairs"]) == 1 and [r["kind"] for r in e["rejects"]] == ["low_score"] for e in journal)
    assert all("the judge scored it 2 (min_score 3)" in e["rejects"][0]["reason"] for e in journal)
    counts = json.loads((folder / "synth.json").read_text(encoding="utf-8"))["counts"]
    assert counts["rows_kept"] == 3 and counts["rejected_by_kind"] == {"low_score": 3}


# ---- --kind facts with a teacher on 127.0.0.1 --------------------------------------------------

PLANTED_FACT = {"fact": "The Amber Gate was rebuilt in 1999.", "support": "The gate was rebuilt in 1999."}


def excerpt_lines(prompt: str) -> list[str]:
    """The lines of the excerpt a prompt quotes (Excerpt:\n\"\"\"\n...\n\"\"\")."""
    text = prompt.split("Excerpt:", 1)[1].split('"""')[1]
    return [line.strip() for line in text.splitlines() if line.strip()]


def phrasings_of(fact: str) -> list[dict]:
    """Five questions about a fact: three forms, one near repeat of the first, one leaning on the excerpt."""
    words = fact.rstrip(".").split()
    subject, rest = " ".join(words[:3]), " ".join(words[3:])
    questions = [
        f"Is it true that {fact.rstrip('.')}?",
        f"What do we know about {subject}?",
        f"Fill in the blank: {subject} ___ {rest}.",
        f"Is it true that {fact.rstrip('.')} ?!",  # the same words: a near-identical phrasing
        f"What does the text say about {subject}?",  # leans on the excerpt
    ]
    return [{"question": q, "answer": fact} for q in questions]


def facts_teacher_reply(prompt: str) -> dict:
    """The JSON each step of --kind facts asks for, built from the prompt: the excerpt's lines are
    its facts (plus one planted fact the chunk doesn't support), a fact's phrasings, two rewrites
    (the excerpt reversed, and one with a planted year)."""
    if 'JSON only: {"facts"' in prompt:
        lines = excerpt_lines(prompt)
        return {"facts": [{"fact": line, "support": line} for line in lines] + [PLANTED_FACT]}
    if 'JSON only: {"rewrites"' in prompt:
        lines = excerpt_lines(prompt)
        return {"rewrites": [" ".join(reversed(lines)), lines[0] + " This happened in 1999."]}
    fact = prompt.split("Fact: ", 1)[1].split("\n", 1)[0]
    return {"pairs": phrasings_of(fact)}


class FactsTeacher(StubModel):
    """Answers --kind facts' three requests with fixed JSON."""

    model = "facts"
    requests = 0
    fail_after: int | None = None  # answer 500 from this many requests on: a teacher that went away

    def answer(self, prompt: str) -> str | None:
        if self.fail_after is not None and self.requests >= self.fail_after:
            return None
        type(self).requests += 1
        return json.dumps(facts_teacher_reply(prompt))


@pytest.fixture
def facts_teacher():
    FactsTeacher.requests, FactsTeacher.fail_after = 0, None
    with serving(FactsTeacher) as url:
        yield url


FACTS_SETTINGS = ("--set", "synth.chunk_tokens=64", "--set", "synth.chunk_overlap=0", "--kind", "facts")


def synth_facts(docs: Path, teacher: str, run: str, *extra: str) -> tuple[int, str]:
    return ftw_in_process(
        "data", "synth", "--recipe", "demo-docs", "--docs", str(docs), "--teacher", teacher, "--run", run,
        *FACTS_SETTINGS, *extra,
    )  # fmt: skip


def jsonl_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_facts_become_phrasings_and_rewrites_that_prepare_splits_into_probes(runs_dir, tmp_path, facts_teacher):
    docs = tmp_path / "docs"
    docs.mkdir()
    make_text_pdf(docs / "gate.pdf", PAGES)
    code, out = synth_facts(docs, facts_teacher, "facts")
    assert code == 0, out
    folder = runs_dir / "facts" / "synth"
    rows, summary = jsonl_of(folder / "synth.jsonl"), json.loads((folder / "synth.json").read_text(encoding="utf-8"))
    questions = [r for r in rows if "fact" in r]
    documents = [r for r in rows if "fact" not in r]
    chunks = sorted({r["chunk"] for r in rows})
    assert len(chunks) == 3  # one per page
    # three facts per page (its lines), each kept in its three stand-alone, distinct phrasings
    assert len({r["fact"] for r in questions}) == 9 and len(questions) == 27
    assert all(r["fact"].startswith(r["chunk"] + ":f") for r in questions)
    assert {r["fact"] for r in questions} == {f"{c}:f{n}" for c in chunks for n in range(3)}
    assert not any("the text" in r["conversations"][0]["value"] for r in questions)
    # one document row per chunk: the grounded rewrite; the one with a planted year is rejected
    assert len(documents) == 3 and all(r["conversations"][0]["value"].startswith("What does ") for r in documents)
    assert "Orlen Vask" in documents[0]["conversations"][1]["value"]
    counts = summary["counts"]
    assert counts["facts"] == 9 and counts["document_rows"] == 3
    assert counts["rows_generated"] == counts["rows_kept"] + counts["rows_rejected"]
    assert counts["rejected_by_kind"] == {
        "not_standalone": 9,
        "near_duplicate_phrasing": 9,
        "ungrounded_fact": 3,
        "ungrounded": 3,
    }
    rejects = jsonl_of(folder / "rejects.jsonl")
    assert {r["fact"]["text"] for r in rejects if r["kind"] == "ungrounded_fact"} == {PLANTED_FACT["fact"]}
    # 3 chunks x (facts + 3 facts' phrasings + rewrites): the planted fact is never asked about
    assert FactsTeacher.requests == 15
    assert "facts: 9 asked in phrasings; 3 of the kept rows are rewrites of chunks" in out

    code, out = ftw_in_process(
        "data", "prepare", "--recipe", "demo-docs", "--run", "facts", "--set", "data.unseen_share=0.34"
    )
    assert code == 0, out
    data = runs_dir / "facts" / "data"
    train, probes, unseen = (jsonl_of(data / f"{name}.jsonl") for name in ("train", "probes", "unseen"))
    assert probes and unseen and train
    assert {r["fact"] for r in probes} <= {r["fact"] for r in train if "fact" in r}
    trained_questions = {r["conversations"][0]["value"] for r in train}
    assert trained_questions.isdisjoint(r["conversations"][0]["value"] for r in probes)
    assert {r["chunk"] for r in unseen}.isdisjoint(r["chunk"] for r in train + probes)
    assert any("fact" not in r for r in train)  # the rewrites of the trained chunks train with them


def test_facts_resume_per_chunk_and_write_what_an_uninterrupted_run_writes(
    runs_dir, tmp_path, facts_teacher, monkeypatch
):
    monkeypatch.setattr(teachers, "CONNECT_RETRIES", 0)  # a teacher that fails is down at once
    docs = tmp_path / "docs"
    docs.mkdir()
    make_text_pdf(docs / "gate.pdf", PAGES)
    assert synth_facts(docs, facts_teacher, "whole")[0] == 0
    whole = (runs_dir / "whole" / "synth" / "synth.jsonl").read_text(encoding="utf-8")
    # each chunk: facts, three facts' phrasings, rewrites = 5 requests; the teacher goes away in the second
    FactsTeacher.requests, FactsTeacher.fail_after = 0, 7
    code, out = synth_facts(docs, facts_teacher, "stopped")
    assert code == 1 and "keeps failing" in out
    journal = runs_dir / "stopped" / "synth" / "journal.jsonl"
    assert [e["requests"] for e in jsonl_of(journal)] == [5]  # the chunk in flight is not journaled
    FactsTeacher.requests, FactsTeacher.fail_after = 0, None
    code, out = synth_facts(docs, facts_teacher, "stopped", "--parallel", "2")
    assert code == 0, out
    assert "1 done before, 2 to ask" in " ".join(out.split())
    assert FactsTeacher.requests == 10  # the two other chunks, each asked whole
    assert (runs_dir / "stopped" / "synth" / "synth.jsonl").read_text(encoding="utf-8") == whole
    # the new settings are inputs too: another number of phrasings is refused, not mixed in
    code, out = synth_facts(docs, facts_teacher, "stopped", "--set", "synth.phrasings=4")
    assert code == 2 and "phrasings" in out and "--force" in out
    assert FactsTeacher.requests == 10
