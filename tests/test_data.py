"""The data step: `ftw data check` and `ftw data prepare` on every format, bad input named
by file:line, and nothing lost: kept + rejected = read.

Most tests call the real CLI in this process (wrapper.cli.main, so the tokenizer and
LLaMA-Factory's template load once); one runs the installed command in a child process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from wrapper.config.recipes import load_recipe
from wrapper.config.schema import DataSettings
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import sha256_of
from wrapper.data.datasets import inspect_dataset
from wrapper.data.prepare import LanguageSplit, prepare
from wrapper.data.prepared import load_prepared
from wrapper.data.readers import Progress, read_json_records, read_subtitle_segments
from wrapper.data.scan import EXACT, NEAR, NEW, OK, DuplicateIndex, Item, Scanner, Source, recipe_counter
from wrapper.train.render import render

from tests.support.runner import REPO, ftw_in_process, run_ftw

SAMPLES = REPO / "data" / "samples"
BAD = REPO / "tests" / "data" / "bad"
GOOD = REPO / "tests" / "data"
DEMO_MODEL = REPO / "models" / "smollm2-135m-instruct"

# Every kind of bad input: its file, the line, and words of the reason.
BAD_ROWS = [
    ("invalid_json.jsonl", 2, "invalid JSON: Expecting ',' delimiter"),
    ("missing_field.jsonl", 2, "missing field 'output'"),
    ("empty_field.jsonl", 3, "empty field 'output'"),
    ("wrong_type.jsonl", 2, "field 'output' must be a string, found number"),
    ("not_utf8.jsonl", 2, "not UTF-8: byte 0xca at column 18 (looks like cp1251"),
    ("lone_surrogate.jsonl", 2, "not UTF-8 text: lone surrogate \\ud800"),
    ("unknown_format.jsonl", 2, "unknown format (keys: question, answer)"),
    ("bad_turns.jsonl", 2, "'conversations' ends with a user turn"),
    ("bad_turns.jsonl", 3, "conversations[0]: turns must alternate"),
    ("broken_array.json", 4, "invalid JSON: expected ',' or ']' after the element, found '{'; the rest of the file"),
    ("not_utf8.txt", 3, "not UTF-8: byte 0xcb at column 1 (looks like cp1251"),
]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_recipe(folder: Path, data_section: str = "", train: str = "", name: str = "mine.yaml") -> Path:
    path = folder / name
    path.write_text(
        f"model:\n  base: {DEMO_MODEL}\n  template: smollm2\nmethod: lora\n"
        f"dataset:\n  - {SAMPLES / 'alpaca.jsonl'}\n{data_section}"
        f"train:\n  cutoff_len: 256\n  save_steps: 5\n{train}",
        encoding="utf-8",
    )
    return path


# --- bad input: check names file:line and exits non-zero; prepare rejects the row --------------


@pytest.mark.parametrize("name, line, reason", BAD_ROWS, ids=[f"{name}:{line}" for name, line, _ in BAD_ROWS])
def test_check_names_file_line_and_reason_and_exits_nonzero(name, line, reason):
    code, out = ftw_in_process("data", "check", str(BAD / name))
    assert code == 1
    assert f"tests/data/bad/{name}:{line}: {reason}" in out
    assert "invalid row(s) in 1 file(s)" in out


@pytest.mark.parametrize("name", sorted({n for n, _, _ in BAD_ROWS} - {"broken_array.json"}))
def test_prepare_rejects_each_bad_row_with_its_line_and_loses_nothing(runs_dir, name):
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo", "--data", str(BAD / name), "--run", "bad")
    assert code == 0, out
    data = runs_dir / "bad" / "data"
    rejects = jsonl(data / "rejects.jsonl")
    expected = {(f"tests/data/bad/{n}:{line}", reason) for n, line, reason in BAD_ROWS if n == name}
    for source, reason in expected:
        (found,) = [r for r in rejects if r["source"] == source]
        assert reason in found["reason"]
        assert found.get("row") or found.get("raw") or found.get("text")  # the dropped row itself
    kept = len(jsonl(data / "train.jsonl")) + (len(jsonl(data / "val.jsonl")) if (data / "val.jsonl").exists() else 0)
    counts = json.loads((data / "prepared.json").read_text(encoding="utf-8"))["counts"]
    assert counts["read"] == counts["kept"] + counts["rejected"] == kept + len(rejects)
    assert f"read {counts['read']} = kept {counts['kept']} + rejected {counts['rejected']}" in out


def test_prepare_refuses_a_json_array_it_cannot_read_to_the_end(runs_dir):
    code, out = ftw_in_process(
        "data", "prepare", "--recipe", "demo", "--data", str(BAD / "broken_array.json"), "--run", "broken"
    )
    assert code == 2
    assert "tests/data/bad/broken_array.json:4: invalid JSON" in out and "nothing was prepared" in out
    assert not (runs_dir / "broken" / "data").exists()


def test_installed_command_exit_codes_and_messages(tmp_path):
    """The `ftw` command in a child process: 1 for invalid rows (every one named), 2 for a missing file."""
    result = run_ftw(tmp_path / "runs", "data", "check", str(BAD), check=False, timeout=300)
    out = " ".join(result.stdout.split())
    assert result.returncode == 1, result.stdout + result.stderr
    for name, line, reason in BAD_ROWS:
        assert f"tests/data/bad/{name}:{line}: {reason}" in out
    missing = run_ftw(tmp_path / "runs", "data", "check", str(tmp_path / "nope.jsonl"), check=False, timeout=300)
    assert missing.returncode == 2 and "data file not found" in missing.stderr


def test_report_file_lists_every_problem(tmp_path):
    report = tmp_path / "report.jsonl"
    code, out = ftw_in_process("data", "check", "--max-problems", "1", "--report", str(report), str(BAD))
    assert code == 1
    assert "... and 1 more invalid rows" in out  # bad_turns.jsonl has two, one shown
    lines = jsonl(report)
    problems = {(p["where"], p["kind"]) for p in lines if "reason" in p}
    assert {where for where, _ in problems} == {f"tests/data/bad/{name}:{line}" for name, line, _ in BAD_ROWS}
    summaries = [p["summary"] for p in lines if "summary" in p]
    assert len(summaries) == len({n for n, _, _ in BAD_ROWS})
    assert sum(s["invalid"] for s in summaries) == len(BAD_ROWS)


def test_bom_and_crlf_are_accepted():
    code, out = ftw_in_process("data", "check", str(GOOD / "bom_crlf.jsonl"), str(GOOD / "bom_crlf.json"))
    assert code == 0, out
    assert out.count("alpaca: 3 rows read, 3 valid, 0 invalid") == 2
    assert [r.line for r in read_json_records(GOOD / "bom_crlf.json")] == [2, 7, 12]


# --- every format in --------------------------------------------------------------------------


def test_check_reads_every_sample_format():
    code, out = ftw_in_process(
        "data",
        "check",
        str(SAMPLES / "alpaca.json"),
        str(SAMPLES / "alpaca.jsonl"),
        str(SAMPLES / "sharegpt.jsonl"),
        str(SAMPLES / "openai.jsonl"),
        str(SAMPLES / "text"),
        str(SAMPLES / "transcripts"),
    )
    assert code == 0, out
    for fmt, rows in (("alpaca", 5), ("alpaca", 8), ("sharegpt", 4), ("openai", 3)):
        assert f"{fmt}: {rows} rows read, {rows} valid, 0 invalid" in out
    assert "plain, 1 document(s) cut into chunks" in out and "subtitles, 1 document(s) cut into chunks" in out
    assert "data/samples/alpaca.jsonl:6: near duplicate of data/samples/alpaca.jsonl:2" in out
    assert "languages: en 3 (lang field), ru 2 (lang field)" in out  # alpaca.json has lang fields
    assert "languages: en 5 (guessed), ru 3 (guessed)" in out  # alpaca.jsonl has none
    assert "tokens: min" in out and "p95" in out and "p99" in out
    assert "cutoff_len that keeps rows whole: 95% ->" in out and "the recipe's cutoff_len 256 truncates" in out


def test_chat_log_is_mapped_by_the_recipe_and_filtered_by_rating(runs_dir):
    code, out = ftw_in_process("data", "check", "--recipe", "demo-chatlog", str(SAMPLES / "chatlog.jsonl"))
    assert code == 0 and "mapped: 6 rows read, 4 valid, 0 invalid, 2 below min_rating 4" in out
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo-chatlog", "--run", "npc")
    assert code == 0, out
    data = runs_dir / "npc" / "data"
    rejects = jsonl(data / "rejects.jsonl")
    assert [(r["source"], r["kind"]) for r in rejects] == [
        ("data/samples/chatlog.jsonl:3", "below_min_rating"),
        ("data/samples/chatlog.jsonl:6", "below_min_rating"),
    ]
    assert rejects[0]["row"]["quality_rating"] == 1
    rows = jsonl(data / "train.jsonl") + jsonl(data / "val.jsonl")
    first = next(r for r in rows if r["source"] == "data/samples/chatlog.jsonl:1")
    assert first["system"].startswith("NPC: Brann the ferryman")
    assert first["conversations"] == [
        {"from": "human", "value": "Can you take me across to Calde Point?"},
        {"from": "gpt", "value": "Across? At this hour? ...Fine. Two silver, and you row on the way back."},
    ]
    assert {r["lang"] for r in rows} == {"en", "ru"}


def test_subtitles_become_plain_text():
    vtt = [r.value for r in read_subtitle_segments(SAMPLES / "transcripts" / "lecture.vtt", Progress())]
    assert vtt == [
        "Профессор Ланина: Сегодня поговорим о лунной стали. Её добывают только в полнолуние, "
        "и это не суеверие, а химия.",
        "Студент: А почему закаливают в талой воде?",
        "Профессор Ланина: Потому что в ней почти нет солей & металлов.",
    ]
    srt = [(r.line, r.value) for r in read_subtitle_segments(SAMPLES / "transcripts" / "interview.srt", Progress())]
    assert srt[0][0] == 3 and srt[0][1].startswith("Today I'm talking to the last keeper of the Calde Point")
    assert "<i>" not in srt[0][1] and "-->" not in srt[0][1]
    assert srt[1][1].startswith("The storms were the worst")  # a 4.5 s pause starts a paragraph


def test_raw_text_is_chunked_to_cutoff_len_and_trains_as_pt(runs_dir, tmp_path):
    recipe = write_recipe(tmp_path, "data:\n  chunk_overlap: 8\n  val_ratio: 0.2\n", train="")
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("cutoff_len: 256", "cutoff_len: 64"), encoding="utf-8")
    code, out = ftw_in_process(
        "data",
        "prepare",
        "--recipe",
        str(recipe),
        "--data",
        str(SAMPLES / "text"),
        "--data",
        str(SAMPLES / "transcripts"),
        "--run",
        "text",
        "--profile",
        "cpu",
    )
    assert code == 0, out
    data = runs_dir / "text" / "data"
    rows = jsonl(data / "train.jsonl") + jsonl(data / "val.jsonl")
    from wrapper.data.tokens import load_counter

    counter = load_counter(str(DEMO_MODEL), "smollm2", None)
    assert len(rows) > 10
    assert all(counter.count_piece(r["text"]) + counter.text_extra <= 64 for r in rows)
    assert all(set(r) == {"text", "lang", "source"} for r in rows)
    chronicle = [r for r in rows if r["source"].startswith("data/samples/text/chronicle.md:")]
    assert chronicle[0]["source"] == "data/samples/text/chronicle.md:1"
    train = yaml.safe_load((runs_dir / "text" / "train.yaml").read_text(encoding="utf-8"))
    assert train["stage"] == "pt" and train["packing"] is False and train["dataset"] == "ftw_train"
    info = json.loads((runs_dir / "text" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["ftw_train"]["columns"] == {"prompt": "text"}


# --- prepare: merge, dedupe, split, invariant, render -------------------------------------------


def test_prepare_merges_every_format_and_keeps_the_invariant(runs_dir):
    files = [SAMPLES / n for n in ("alpaca.json", "alpaca.jsonl", "sharegpt.jsonl", "openai.jsonl")]
    files += [
        BAD / n
        for n in (
            "invalid_json.jsonl",
            "missing_field.jsonl",
            "wrong_type.jsonl",
            "not_utf8.jsonl",
            "unknown_format.jsonl",
            "empty_field.jsonl",
        )
    ]
    args = [a for f in files for a in ("--data", str(f))]
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo", *args, "--run", "merged")
    assert code == 0, out
    data = runs_dir / "merged" / "data"
    train, val, rejects = jsonl(data / "train.jsonl"), jsonl(data / "val.jsonl"), jsonl(data / "rejects.jsonl")
    info = json.loads((data / "prepared.json").read_text(encoding="utf-8"))
    read = 5 + 8 + 4 + 3 + 6 * 3
    assert info["counts"]["read"] == read == len(train) + len(val) + len(rejects)
    assert sum(s["read"] for s in info["sources"]) == read
    assert all(s["read"] == s["kept"] + s["rejected"] for s in info["sources"])
    # the bad files hold the same good rows: each good row after the first copy is an exact duplicate
    assert info["counts"]["rejected_by_kind"]["exact_duplicate"] == 2 * 6 - 2
    assert all(r["source"].count(":") == 1 and r["reason"] for r in rejects)
    assert all(set(r) >= {"conversations", "lang", "source"} for r in train + val)
    assert {r["source"] for r in train + val}.isdisjoint(r["source"] for r in rejects)
    for entry in info["files"].values():
        assert sha256_of(Path(entry["path"])) == entry["sha256"]
    assert all(len(s["sha256"]) == 64 for s in info["sources"])


@pytest.mark.parametrize("mode, dropped", [("none", 0), ("exact", 0), ("near", 1)])
def test_dedupe_modes(runs_dir, tmp_path, mode, dropped):
    recipe = write_recipe(tmp_path, f"data:\n  dedupe: {mode}\n")
    info = prepare(str(recipe), [str(SAMPLES / "alpaca.jsonl")], "dedupe").info
    assert info["counts"]["rejected"] == dropped
    if dropped:
        (reject,) = jsonl(runs_dir / "dedupe" / "data" / "rejects.jsonl")
        assert reject["source"] == "data/samples/alpaca.jsonl:6"
        assert reject["reason"].startswith("near duplicate of data/samples/alpaca.jsonl:2")


def test_split_is_seeded_and_stratified_by_language():
    langs = ["en"] * 700 + ["ru"] * 290 + ["de"] * 10
    np.random.default_rng(0).shuffle(langs)

    def picks(seed):
        split = LanguageSplit(0.1, seed)
        return [i for i, lang in enumerate(langs) if split.is_validation(lang)]

    first = picks(42)
    assert first == picks(42) and first != picks(7)
    for lang, n in (("en", 700), ("ru", 290), ("de", 10)):
        chosen = sum(1 for i in first if langs[i] == lang)
        assert int(n * 0.1) <= chosen <= int(n * 0.1) + 1
    assert LanguageSplit(0.0, 42).is_validation("en") is False


def test_render_uses_prepared_data_until_told_otherwise(runs_dir):
    code, out = ftw_in_process("render", "--recipe", "demo", "--profile", "cpu", "--run", "r")
    assert code == 0, out
    assert yaml.safe_load((runs_dir / "r" / "train.yaml").read_text(encoding="utf-8"))["dataset"].startswith(
        "ftw_0_demo_lore"
    )
    # prepare on a rendered run re-renders it with the same profile: LLaMA-Factory's parser checks it
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo", "--run", "r")
    assert code == 0, out
    # the demo's rows carry `fact`: the validation loss is the probes' (tests/test_knowledge.py)
    assert "re-rendered" in out and "eval_dataset ftw_probes" in out
    train = yaml.safe_load((runs_dir / "r" / "train.yaml").read_text(encoding="utf-8"))
    assert (train["dataset"], train["eval_dataset"], train["eval_strategy"]) == ("ftw_train", "ftw_probes", "steps")
    assert "val_size" not in train
    manifest = json.loads((runs_dir / "r" / "manifest.json").read_text(encoding="utf-8"))
    assert [d["name"] for d in manifest["datasets"]] == ["ftw_train", "ftw_probes"]
    assert all(len(d["sha256"]) == 64 for d in manifest["datasets"])
    assert manifest["plan"]["prepared_data"]["sources"][0]["sha256"] == sha256_of(REPO / "data" / "demo_lore.json")
    # a later render keeps it, and says so
    code, out = ftw_in_process("render", "--recipe", "demo", "--profile", "cpu", "--run", "r", "--set", "seed=3")
    assert code == 0 and "data: prepared by `ftw data prepare`" in out
    assert yaml.safe_load((runs_dir / "r" / "train.yaml").read_text(encoding="utf-8"))["dataset"] == "ftw_train"
    # --data wins for that render
    code, out = ftw_in_process(
        "render", "--recipe", "demo", "--profile", "cpu", "--run", "r", "--data", str(SAMPLES / "openai.jsonl")
    )
    assert code == 0 and "the prepared data in" in out and "is not used this time" in out
    train = yaml.safe_load((runs_dir / "r" / "train.yaml").read_text(encoding="utf-8"))
    assert train["dataset"] == "ftw_0_openai" and "eval_dataset" not in train


def test_prepared_files_that_changed_are_refused(runs_dir):
    prepare("demo", [str(SAMPLES / "alpaca.jsonl")], "changed")
    train = runs_dir / "changed" / "data" / "train.jsonl"
    train.write_text(train.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(FtwError, match="missing or changed since `ftw data prepare` wrote it"):
        load_prepared(runs_dir / "changed")


def test_render_notes_sources_changed_since_prepare(runs_dir, tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes((SAMPLES / "openai.jsonl").read_bytes())
    code, out = ftw_in_process(
        "data", "prepare", "--recipe", "demo", "--data", str(mine), "--run", "c", "--profile", "cpu"
    )
    assert code == 0, out
    with mine.open("a", encoding="utf-8") as handle:
        handle.write('{"messages": [{"role": "user", "content": "New?"}, {"role": "assistant", "content": "Yes."}]}\n')
    code, out = ftw_in_process("render", "--recipe", "demo", "--profile", "cpu", "--run", "c")
    # the console may wrap the long temporary path anywhere
    assert code == 0 and "mine.jsonlchangedsinceitwasprepared;runftwdataprepareagain" in "".join(out.split())


def test_conversations_with_a_pt_stage_are_refused(runs_dir, tmp_path):
    recipe = write_recipe(tmp_path, train="  stage: pt\n")
    with pytest.raises(FtwError, match=r"mine.yaml:\d+ \(key 'train.stage'\): stage pt trains on raw text"):
        prepare(str(recipe), [], "pt")


# --- recipe data: section -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, message",
    [
        ("data:\n  val_ratoi: 0.1\n", r"mine.yaml:8 \(key 'data.val_ratoi'\): unknown key. Did you mean 'val_ratio'\?"),
        ("data:\n  field_map:\n    prompt: q\n", r"mine.yaml:9 \(key 'data.field_map.prompt'\): unknown key"),
        ("data:\n  dedupe: fuzzy\n", r"mine.yaml:8 \(key 'data.dedupe'\): dedupe must be one of exact, near, none"),
        ("data:\n  val_ratio: 1.5\n", r"mine.yaml:8 \(key 'data.val_ratio'\): val_ratio is a share"),
        ("data:\n  min_rating: 3\n", r"mine.yaml:8 \(key 'data.min_rating'\): min_rating needs field_map.rating"),
        ("data:\n  seed: many\n", r"mine.yaml:8 \(key 'data.seed'\): expected int"),
        ("data:\n  replay_share: 0\n", r"mine.yaml:8 \(key 'data.replay_share'\): replay_share is the share"),
        ("data:\n  replay_share: 1\n", r"mine.yaml:8 \(key 'data.replay_share'\): .*0 < replay_share < 1; found 1"),
        ("data:\n  replay_share: -0.1\n", r"found -0.1"),
        ("data:\n  replay: ''\n", r"mine.yaml:8 \(key 'data.replay'\): replay is a file of general rows"),
        ("data:\n  replay: [a.json]\n", r"mine.yaml:8 \(key 'data.replay'\): expected str"),
    ],
)
def test_recipe_data_section_errors_name_file_and_line(tmp_path, section, message):
    with pytest.raises(FtwError, match=message):
        load_recipe(str(write_recipe(tmp_path, section)))


# --- pieces -----------------------------------------------------------------------------------


def test_json_array_is_streamed_with_line_numbers_across_chunks(monkeypatch, tmp_path):
    import wrapper.data.readers as readers

    rows = [{"instruction": f"q{i} " + "ж" * (i % 7), "input": "", "output": f"a{i}\n"} for i in range(200)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    monkeypatch.setattr(readers, "CHUNK_BYTES", 37)  # element boundaries fall inside chunks
    seen = Progress()
    records = list(read_json_records(path, seen))
    assert [r.value for r in records] == rows
    assert [r.line for r in records] == [2 + 5 * i for i in range(200)]
    assert seen.sha256.hexdigest() == sha256_of(path)


def test_a_big_json_array_is_read_in_bounded_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "big.json"
    row = {"instruction": "Кто охраняет Янтарные врата? " * 4, "input": "", "output": "Орлен Васк. " * 20}
    with path.open("w", encoding="utf-8") as out:
        out.write("[\n" + ",\n".join(json.dumps({**row, "id": i}, ensure_ascii=False) for i in range(60000)) + "\n]\n")
    size = path.stat().st_size
    assert size > 38 << 20
    tracemalloc.start()
    try:
        count = sum(1 for record in read_json_records(path) if record.value["id"] >= 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 60000
    assert peak < 12 << 20, f"peak {peak >> 20} MiB for a {size >> 20} MiB file"  # ~1 MB chunks, not the file


def test_a_hub_tokenizer_that_is_not_cached_skips_lengths_quickly(tmp_path):
    recipe = tmp_path / "hub.yaml"
    recipe.write_text(
        f"model: {{base: nobody/not-a-model-{tmp_path.name}, template: qwen}}\ndataset: [{SAMPLES / 'openai.jsonl'}]\n",
        encoding="utf-8",
    )
    code, out = ftw_in_process("data", "check", "--recipe", str(recipe), str(SAMPLES / "openai.jsonl"))
    assert code == 0 and "token lengths skipped" in out and "not in the local Hugging Face cache" in out
    assert "openai: 3 rows read, 3 valid, 0 invalid" in out


def test_render_time_inspection_streams_with_the_same_reader(tmp_path):
    found = inspect_dataset(GOOD / "bom_crlf.json")
    assert (found.format, found.rows, found.sha256) == ("alpaca", 3, sha256_of(GOOD / "bom_crlf.json"))
    with pytest.raises(FtwError, match=r"broken_array.json:4: invalid JSON"):
        inspect_dataset(BAD / "broken_array.json")


# One row each, and how every entry point must classify it: its format, or why it can't be used.
CLASSIFIED = [
    ({"instruction": "Q?", "output": "A."}, "alpaca", None),
    ({"instruction": "Q?"}, "alpaca", "missing field 'output'"),
    ({"output": "A."}, "alpaca", "missing field 'instruction'"),
    ({"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}, "sharegpt", None),
    ({"conversations": "Q? A."}, "sharegpt", "field 'conversations' must be an array of messages"),
    ({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}, "openai", None),
    (
        {
            "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
            "instruction": "x",
            "output": "y",
        },
        "openai",
        None,
    ),
    ({"text": "A paragraph of raw text."}, "text", None),
    ({"text": 5}, "text", "field 'text' must be a string, found number"),
    ({"question": "Q?", "answer": "A."}, None, "unknown format (keys: question, answer)"),
]


@pytest.mark.parametrize("row, fmt, problem", CLASSIFIED, ids=[str(i) for i in range(len(CLASSIFIED))])
def test_render_check_and_prepare_classify_a_row_the_same(runs_dir, tmp_path, row, fmt, problem):
    """One detector (wrapper/data/formats.py) for all three: the same format, or the same reason."""
    # prepare needs a row it can keep: a valid one of the same format (a file holds one)
    companion = next(r for r, f, p in CLASSIFIED if f == (fmt or "alpaca") and p is None)
    data = tmp_path / "one.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (row, *([companion] if problem else []))), encoding="utf-8")

    scanner = Scanner([data], DataSettings(), recipe_counter(load_recipe("demo"))[0], 256)
    first = next(scanner.batches(scanner.sources[0]))[0]
    prepare("demo", [str(data)], "p")
    prepared = json.loads((runs_dir / "p" / "data" / "prepared.json").read_text(encoding="utf-8"))
    if fmt:  # an unknown row leaves the file's format to the companion
        assert scanner.reports[0].format == fmt
        assert prepared["sources"][0]["format"] == fmt
    if problem is None:
        assert first.problem is None
        assert render("demo", "cpu", "r", [str(data)], []).datasets[0]["format"] == fmt
        return
    assert first.problem.reason.startswith(problem)
    with pytest.raises(FtwError, match=re.escape(f"one.jsonl:1: {problem}")):
        render("demo", "cpu", "r", [str(data)], [])
    (reject,) = [
        json.loads(line)
        for line in (runs_dir / "p" / "data" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert reject["reason"].startswith(problem) and reject["source"].endswith("one.jsonl:1")


def test_duplicate_index_across_and_within_batches():
    source = Source(0, REPO / "x.jsonl", "json")
    index = DuplicateIndex([source])

    def batch(*pairs):
        items = [Item(source, line, OK, exact=e, near=n) for line, (e, n) in enumerate(pairs, start=len(seen) + 1)]
        seen.extend(items)
        index.classify(items)
        return [(i.duplicate, i.duplicate_of) for i in items]

    seen: list = []
    assert batch((1, 10), (2, 20), (1, 10), (3, 10)) == [
        (NEW, None),
        (NEW, None),
        (EXACT, "x.jsonl:1"),
        (NEAR, "x.jsonl:1"),
    ]
    assert batch((2, 20), (4, 40), (5, 20), (4, 40)) == [
        (EXACT, "x.jsonl:2"),
        (NEW, None),
        (NEAR, "x.jsonl:2"),
        (EXACT, "x.jsonl:6"),
    ]
    assert index.nbytes == 16 * (5 + 3)  # 5 exact and 3 near hashes, with their locations


def test_token_counts_match_llamafactorys_template():
    """The fast count (batch tokenization + the template's measured overhead) against
    LLaMA-Factory's own encode_multiturn on every sample conversation."""
    from wrapper.data.formats import detect_format, parse_row
    from wrapper.data.tokens import load_counter

    counter = load_counter(str(DEMO_MODEL), "smollm2", None)
    rows = []
    for name in ("alpaca.json", "alpaca.jsonl", "sharegpt.jsonl", "openai.jsonl"):
        rows += [parse_row(r.value, detect_format(r.value)) for r in read_json_records(SAMPLES / name)]
    fast = counter.count_rows(rows)
    exact = [counter._exact(row.turns, row.system, row.tools) for row in rows]
    assert all(abs(f - e) <= len(row.turns) for f, e, row in zip(fast, exact, rows)), list(zip(fast, exact))
    assert sum(f == e for f, e in zip(fast, exact)) >= len(rows) * 0.8
