"""`data.replay`: general rows mixed into train.jsonl against forgetting (wrapper/data/replay.py).

The replay rows make `data.replay_share` of train.jsonl, are drawn seeded from the file's kept rows
(all of them when it has fewer), pass the same checks as the data's rows, never become validation rows,
probes or unseen rows, carry no `fact`, and lie spread through the file; a missing file or a bad share
stops with the recipe's file:line.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from test_data import SAMPLES, jsonl, write_recipe
from test_knowledge import prepared, synth_rows, text_of, write_jsonl

from wrapper.data.prepare import prepare
from wrapper.data.prepared import load_prepared

from tests.support.runner import ftw_in_process

LLAMAFACTORY_DEMO = Path("/work/shared/external/llamafactory-data/alpaca_en_demo.json")


def general_rows(count: int) -> list[dict]:
    """General rows; every other one names a `fact`, which a replay row never carries into training."""
    rows = [
        {"instruction": f"General question {n}: what is {n} + {n}?", "output": f"It is {2 * n}."} for n in range(count)
    ]
    for row in rows[::2]:
        row["fact"] = "general"
    return rows


def from_replay(rows: list[dict], replay: Path) -> list[int]:
    """The places in `rows` of the rows read from the replay file."""
    return [place for place, row in enumerate(rows) if row["source"].rsplit(":", 1)[0].endswith(replay.name)]


def test_replay_rows_make_the_share_and_only_ever_train(runs_dir, tmp_path):
    data = write_jsonl(tmp_path / "facts.jsonl", synth_rows())
    rows = general_rows(200)
    duplicate = synth_rows()[0]  # a row of the data, in another format: trains once, as the data's
    rows.append(
        {"instruction": duplicate["conversations"][0]["value"], "output": duplicate["conversations"][1]["value"]}
    )
    rows.append({"instruction": "A question with no answer"})
    replay = write_jsonl(tmp_path / "general.jsonl", rows)
    with replay.open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    recipe = write_recipe(tmp_path, "data:\n  replay: general.jsonl\n  replay_share: 0.2\n")  # beside the recipe
    code, out = ftw_in_process("data", "prepare", "--recipe", str(recipe), "--data", str(data), "--run", "mixed")
    assert code == 0, out
    info, files = prepared(runs_dir, "mixed")
    train, general = files["train"], info["replay"]

    # the share: n = round(0.2 / 0.8 x the data's trained rows), all read, counted and said
    places = from_replay(train, replay)
    trained = len(train) - len(places)
    assert general["drawn"] == len(places) == round(0.25 * trained) == general["asked"] == info["counts"]["replay"]
    assert (general["read"], general["kept"], general["rejected"]) == (203, 200, 3)
    assert general["rejected_by_kind"] == {"exact_duplicate": 1, "missing_field": 1, "invalid_json": 1}
    assert general["share"] == 0.2 and general["path"] == str(replay) and len(general["sha256"]) == 64
    assert info["counts"]["train"] == len(train) and info["counts"]["read"] == len(synth_rows())
    # the path before it may be folded at the console's width (a long tmp path under xdist): not asserted
    said = " ".join(out.split())  # lines folded anywhere at the console's width, words kept whole
    assert "read 203, kept 200, rejected 3 (exact duplicate 1, missing field 1, invalid json 1)" in said
    assert re.search(rf"drew {len(places)} into train\.jsonl at random places \(share 0\.2\)", said), out
    rejected = [r for r in files["rejects"] if r["source"].startswith(str(replay))]
    assert len(rejected) == 3 and {r["kind"] for r in rejected} == set(general["rejected_by_kind"])

    # only ever training: never a probe or unseen row, no fact, no chunk; the data's facts alone are split
    for name in ("probes", "unseen"):
        assert not from_replay(files[name], replay)
    assert all("fact" not in train[p] and "chunk" not in train[p] for p in places)
    assert info["knowledge"]["facts"] == 24
    assert sum(1 for r in train if text_of(r) == text_of(duplicate)) <= 1

    # spread through the file, not a block at its end
    assert places != list(range(trained, len(train))) and places[-1] - places[0] + 1 > len(places)

    # seeded: the same rows in the same places again
    code, _ = ftw_in_process("data", "prepare", "--recipe", str(recipe), "--data", str(data), "--run", "again")
    assert code == 0 and prepared(runs_dir, "again")[1]["train"] == train


def test_replay_without_facts_leaves_the_validation_split_as_it_was(runs_dir, tmp_path):
    replay = write_jsonl(tmp_path / "general.jsonl", general_rows(30))
    data = [str(SAMPLES / "alpaca.jsonl"), str(SAMPLES / "sharegpt.jsonl")]
    plain = prepare("demo", data, "plain", ["data.val_ratio=0.3"]).info
    mixed = prepare("demo", data, "mixed", ["data.val_ratio=0.3", f"data.replay={replay}"]).info
    assert mixed["knowledge"] is None and mixed["replay"]["drawn"] == round(plain["counts"]["train"] / 9)
    assert jsonl(runs_dir / "mixed" / "data" / "val.jsonl") == jsonl(runs_dir / "plain" / "data" / "val.jsonl")
    train = jsonl(runs_dir / "mixed" / "data" / "train.jsonl")
    assert len(from_replay(train, replay)) == mixed["replay"]["drawn"]
    assert [r for r in train if replay.name not in r["source"]] == jsonl(runs_dir / "plain" / "data" / "train.jsonl")
    assert mixed["counts"]["train"] == plain["counts"]["train"] + mixed["replay"]["drawn"]
    assert plain["replay"] is None and plain["counts"]["replay"] == 0


def test_a_replay_file_with_fewer_rows_than_asked_trains_them_all_and_says_so(runs_dir, tmp_path):
    replay = write_jsonl(tmp_path / "few.jsonl", general_rows(3))
    code, out = ftw_in_process(
        "data", "prepare", "--recipe", "demo", "--run", "few", "--set", f"data.replay={replay}",
        "--set", "data.replay_share=0.5",
    )  # fmt: skip
    assert code == 0, out
    general = prepared(runs_dir, "few")[0]["replay"]
    assert general["drawn"] == 3 < general["asked"]
    assert f"the share asked for {general['asked']}, the file has only 3: all of them train" in out


def test_a_missing_replay_file_stops_before_anything_is_written(runs_dir, tmp_path):
    recipe = write_recipe(tmp_path, "data:\n  seed: 1\n  replay: nowhere/general.json\n")
    code, out = ftw_in_process("data", "prepare", "--recipe", str(recipe), "--run", "lost")
    assert code == 2, out
    assert "mine.yaml:9 (key 'data.replay'): the replay file" in out and "nowhere/general.json not found" in out
    assert out.rstrip().endswith("then run `ftw data prepare` again")
    assert not (runs_dir / "lost").exists()


@pytest.mark.skipif(not LLAMAFACTORY_DEMO.is_file(), reason="LLaMA-Factory's demo data is not on this machine")
def test_llamafactory_demo_data_as_the_replay_file_and_its_change_makes_the_data_stale(runs_dir, tmp_path):
    replay = tmp_path / LLAMAFACTORY_DEMO.name
    replay.write_bytes(LLAMAFACTORY_DEMO.read_bytes())
    code, out = ftw_in_process("data", "prepare", "--recipe", "demo", "--run", "lf", "--set", f"data.replay={replay}")
    assert code == 0, out
    info, files = prepared(runs_dir, "lf")
    general = info["replay"]
    assert general["read"] == len(json.loads(replay.read_text(encoding="utf-8")))
    assert general["read"] == general["kept"] + general["rejected"] and general["drawn"] == general["asked"] > 0
    assert len(from_replay(files["train"], replay)) == general["drawn"]
    data = load_prepared(runs_dir / "lf")
    assert data.changed_sources() == []
    assert data.summary()["replay"] == {key: general[key] for key in ("path", "sha256", "drawn", "share")}
    stat = replay.stat()
    os.utime(replay, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert data.changed_sources() == [str(replay)]
