"""`ftw publish`: the folder it stages for the Hub, read back the way the Hub, Ollama and
huggingface_hub read it, and the refusals before anything is uploaded.

The Hub is not reachable here: the folder is built with --dry-run through the real CLI, and the
upload itself runs in process with HfApi's create_repo/upload_folder replaced by recorders.
A fake HF_TOKEN is set throughout; no staged byte may contain it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.runner import FAKE_HF_TOKEN, point_manifest_at, run_ftw

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The Hub is unreachable here: nothing may wait on it (the license comes from --license or stays unknown).
OFFLINE = {"HF_TOKEN": FAKE_HF_TOKEN, "HF_HUB_OFFLINE": "1"}
CARD_ARGS = ("--base-model", BASE_ID, "--license", "apache-2.0")
SECRET_ROW = "A validation row that must never reach the card"


def light_copy(run: Path, runs_dir: Path) -> Path:
    """The shared demo run without what publishing doesn't read (merged weights, the f16 GGUF,
    checkpoints), its manifest's paths pointed at the copy."""
    copy = runs_dir / run.name
    shutil.copytree(run, copy, symlinks=True, ignore=shutil.ignore_patterns("merged", "*-f16.gguf", "checkpoint-*"))
    point_manifest_at(copy, run)
    return copy


def staged_bytes(folder: Path) -> dict[str, bytes]:
    """Every file upload_folder would send (links followed), by its path in the repository."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.glob("**/*")) if path.is_file()
    }


def write_eval(run_dir: Path) -> None:
    """A small eval.json as `ftw eval` writes it (aggregates, and rows the card must leave out)."""
    gguf = run_dir / "gguf" / f"{run_dir.name}-Q4_K_M.gguf"
    block = {"rows": 4, "contains": 0.75, "token_f1": 0.612, "rouge_l": 0.5, "key_info_recall": None}
    result = {
        "run": run_dir.name,
        "recipe": "demo",
        "profile": "cpu",
        "settings": {"max_new_tokens": 40},
        "evaluated_at": "2026-12-03T06:00:00+00:00",
        "models": {"base": "base", "merged": "merged", "gguf": str(gguf)},
        "aggregate": {"control": {"base": {**block, "contains": 0.0}, "merged": block, "gguf": block}},
        "forgetting": {"rows": 3, "known_by_base": 3, "merged": {"forgotten": 1}, "gguf": {"forgotten": 2}},
        "rows": [{"set": "val", "model": "gguf", "prompt": SECRET_ROW, "answer": SECRET_ROW}],
    }
    (run_dir / "eval.json").write_text(json.dumps(result), encoding="utf-8")


@pytest.fixture(scope="module")
def staged(demo_run, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the demo run with an eval.json, published with --dry-run: (run folder, ftw's output)."""
    run_dir = light_copy(demo_run, tmp_path_factory.mktemp("publish") / "runs")
    write_eval(run_dir)
    result = run_ftw(
        run_dir.parent,
        "publish",
        "--run",
        run_dir.name,
        "--repo",
        "alice/e2e-lore",
        "--dry-run",
        *CARD_ARGS,
        env=OFFLINE,
    )
    return run_dir, result.stdout


def test_dry_run_stages_the_exact_folder_and_lists_it(staged):
    run_dir, out = staged
    folder = run_dir / "publish"
    files = staged_bytes(folder)
    assert set(files) == {"e2e-Q4_K_M.gguf", "template", "system", "params", "Modelfile", "README.md"}
    for name in files:
        assert name in out  # the listing, with sizes
    assert "105." in out and "MB" in out and "nothing uploaded" in out
    # The GGUF is a link into gguf/, not a 5 GB copy; upload_folder follows it.
    gguf = folder / "e2e-Q4_K_M.gguf"
    assert gguf.is_symlink() and gguf.resolve() == (run_dir / "gguf" / "e2e-Q4_K_M.gguf").resolve()
    assert not (run_dir / "publish.partial").exists()
    assert json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["artifacts"]["publish"] == str(folder)


def test_the_card_metadata_reads_back_with_huggingface_hub(staged):
    from huggingface_hub import ModelCard

    run_dir, _ = staged
    card = ModelCard.load(run_dir / "publish" / "README.md")
    data = card.data
    assert data.base_model == BASE_ID
    # A trained model, not the base quantized: see BASE_MODEL_RELATION in wrapper/publish/card.py.
    assert data.base_model_relation == "finetune"
    assert data.license == "apache-2.0"
    assert data.language == ["en", "ru"]
    assert data.pipeline_tag == "text-generation"
    assert data.library_name == "gguf"
    assert {"gguf", "ollama", "llama.cpp", "lora"} <= set(data.tags)
    text = card.text
    assert "ollama run hf.co/alice/e2e-lore:Q4_K_M" in text and "llama-server -hf alice/e2e-lore:Q4_K_M" in text
    assert "| LoRA | rank 16, alpha 32, target all |" in text and "| rows | 15 in 1 file(s) |" in text
    assert "| validation rows | 10, held out (never trained) |" in text  # the demo's probes
    # The evaluation's aggregates, never its rows; no local path; the data stays home.
    assert "| control (4) | token_f1 | 0.612 | 0.612 | 0.612 |" in text
    assert "forgot 1 (HF) and 2 (GGUF)" in text
    assert SECRET_ROW not in text and str(run_dir) not in text and "demo_lore" not in text
    assert "not published" in text


def test_ollama_files_say_what_the_verified_modelfile_says(staged, demo_run):
    from wrapper.config.ollama import OLLAMA_PARAMETERS
    from wrapper.prompts import gorender

    run_dir, _ = staged
    folder = run_dir / "publish"
    run_commands = gorender.parse_modelfile((demo_run / "Modelfile").read_text(encoding="utf-8"))
    stops = [value for name, value in run_commands if name == "stop"]
    params = json.loads((folder / "params").read_text(encoding="utf-8"))
    assert set(params) <= set(OLLAMA_PARAMETERS)
    assert params == {"stop": stops, "temperature": 0.2, "num_ctx": 2048}  # typed as Ollama's options are
    published = gorender.parse_modelfile((folder / "Modelfile").read_text(encoding="utf-8"))
    assert ("model", "./e2e-Q4_K_M.gguf") in published
    assert [c for c in published if c[0] != "model"] == [c for c in run_commands if c[0] != "model"]
    assert (folder / "template").read_text(encoding="utf-8") == dict(run_commands)["template"]
    assert (folder / "system").read_text(encoding="utf-8") == dict(run_commands)["system"]
    text = (folder / "Modelfile").read_text(encoding="utf-8")
    assert str(run_dir) not in text and str(demo_run) not in text  # the run's comments name its local folder
    assert "ollama run hf.co/alice/e2e-lore" in text


def test_the_template_file_rendered_by_go_is_the_training_prompt(staged, demo_run):
    from wrapper.core.manifest import plan_of
    from wrapper.prompts.fidelity import GgufChat, check_ollama_template
    from wrapper.prompts.training_format import training_format

    run_dir, _ = staged
    folder = run_dir / "publish"
    plan = plan_of(demo_run)
    fmt = training_format(demo_run / "merged", plan.template, plan.system)
    report = check_ollama_template(
        fmt,
        (folder / "template").read_text(encoding="utf-8"),
        (folder / "system").read_text(encoding="utf-8"),
        GgufChat.read(folder / "e2e-Q4_K_M.gguf"),
    )
    assert report.identical, report.summary()
    assert report.checked >= 12


def test_no_staged_byte_holds_the_token(staged):
    run_dir, _ = staged
    for name, content in staged_bytes(run_dir / "publish").items():
        assert FAKE_HF_TOKEN.encode() not in content, name  # the GGUF too, byte by byte
    assert FAKE_HF_TOKEN not in (run_dir / "manifest.json").read_text(encoding="utf-8")


def test_more_quants_the_adapter_and_include_data(demo_run, tmp_path):
    run_dir = light_copy(demo_run, tmp_path / "runs")
    # A second quantization and a LoRA GGUF, stood in for by links to the Q4_K_M file: publishing only
    # reads their names, sizes and GGUF headers.
    data = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    for key, name in (("gguf_q8_0", "e2e-Q8_0.gguf"), ("gguf_lora", "e2e-lora.gguf")):
        (run_dir / "gguf" / name).symlink_to("e2e-Q4_K_M.gguf")
        data["artifacts"][key] = str(run_dir / "gguf" / name)
    (run_dir / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    args = ("publish", "--run", "e2e", "--repo", "alice/e2e-lore", "--dry-run", "--include-data", *CARD_ARGS)
    run_ftw(run_dir.parent, *args, env=OFFLINE)
    folder = run_dir / "publish"
    assert set(staged_bytes(folder)) == {
        "e2e-Q4_K_M.gguf",
        "e2e-Q8_0.gguf",
        "adapter/lora-adapter.gguf",
        "data/train.jsonl",  # the prepared data the run used: what trained, and the held-out probes
        "data/probes.jsonl",
        "template",
        "system",
        "params",
        "Modelfile",
        "README.md",
    }
    assert "FROM ./e2e-Q4_K_M.gguf" in (folder / "Modelfile").read_text(encoding="utf-8")
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "ollama run hf.co/alice/e2e-lore:Q8_0" in card and "--lora adapter/lora-adapter.gguf" in card
    assert "published with the model under `data/`" in card
    # Unchanged inputs: the folder is not made again.
    assert "up to date" in run_ftw(run_dir.parent, *args, env=OFFLINE).stdout
    # --quant picks; one the run lacks says how to make it.
    run_ftw(run_dir.parent, *args, "--quant", "q8_0", env=OFFLINE)
    assert "e2e-Q4_K_M.gguf" not in staged_bytes(folder)
    assert "FROM ./e2e-Q8_0.gguf" in (folder / "Modelfile").read_text(encoding="utf-8")


def test_upload_creates_the_repo_and_uploads_the_staged_folder(demo_run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from wrapper.commands.publish import publish

    run_dir = light_copy(demo_run, tmp_path / "runs")
    monkeypatch.setenv("FTW_RUNS_DIR", str(run_dir.parent))
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    calls: dict = {}

    def create_repo(self, repo_id, **options):
        calls["create_repo"] = {"repo_id": repo_id, "token": self.token, **options}

    def upload_folder(self, **options):
        calls["upload_folder"] = {"token": self.token, **options, "files": staged_bytes(Path(options["folder_path"]))}
        return SimpleNamespace(commit_url="https://huggingface.co/alice/e2e-lore/commit/0123abcd")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    args = ["--run", run_dir.name, "--repo", "alice/e2e-lore", "--private", "--base-model", BASE_ID]
    publish.main([*args, "--license", "apache-2.0"], standalone_mode=False)  # `ftw publish`, in this process

    created, uploaded = calls["create_repo"], calls["upload_folder"]
    assert created == {
        "repo_id": "alice/e2e-lore",
        "token": FAKE_HF_TOKEN,  # the environment's, handed to HfApi only
        "private": True,
        "repo_type": "model",
        "exist_ok": True,
    }
    assert uploaded["repo_id"] == "alice/e2e-lore" and uploaded["repo_type"] == "model"
    assert Path(uploaded["folder_path"]) == run_dir / "publish" and uploaded["token"] == FAKE_HF_TOKEN
    assert "README.md" in uploaded["files"] and "e2e-Q4_K_M.gguf" in uploaded["files"]
    assert all(FAKE_HF_TOKEN.encode() not in content for content in uploaded["files"].values())
    out = capsys.readouterr().out
    assert "https://huggingface.co/alice/e2e-lore" in out and "ollama run hf.co/alice/e2e-lore:Q4_K_M" in out
    assert FAKE_HF_TOKEN not in out
    published = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["published"]
    assert published["repo"] == "alice/e2e-lore" and published["private"] is True
    assert FAKE_HF_TOKEN not in json.dumps(published)


def test_a_missing_or_stale_modelfile_is_written_again_before_publishing(demo_run, tmp_path):
    """The Modelfile takes seconds to make: publish makes it again rather than asking for `ftw modelfile`."""
    run_dir = light_copy(demo_run, tmp_path / "runs")
    # the Modelfile stage reads the merged model's tokenizer and config, not its weights
    shutil.copytree(demo_run / "merged", run_dir / "merged", ignore=shutil.ignore_patterns("*.safetensors"))
    manifest_path = run_dir / "manifest.json"
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    args = ("publish", "--run", "e2e", "--repo", "alice/e2e-lore", "--dry-run")
    data["stages"]["modelfile"]["inputs"]["chat template"] = "sha256 0000000000000000"  # re-rendered since
    manifest_path.write_text(json.dumps(data), encoding="utf-8")
    result = run_ftw(run_dir.parent, *args, env=OFFLINE)
    assert "made from an earlier chat template: writing it again" in " ".join(result.stdout.split())
    recorded = json.loads(manifest_path.read_text(encoding="utf-8"))["stages"]["modelfile"]["inputs"]
    assert recorded["chat template"] != "sha256 0000000000000000"  # made again from what the run has now
    assert (run_dir / "publish" / "Modelfile").is_file()

    shutil.rmtree(run_dir / "publish")
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    del data["artifacts"]["modelfile"]
    (run_dir / "Modelfile").unlink()
    manifest_path.write_text(json.dumps(data), encoding="utf-8")
    result = run_ftw(run_dir.parent, *args, env=OFFLINE)
    assert "No Modelfile yet: writing it (ftw modelfile --run e2e)" in " ".join(result.stdout.split())
    assert (run_dir / "Modelfile").is_file() and (run_dir / "publish" / "Modelfile").is_file()


# ---- bad input: refused with exit 2 before anything is staged or uploaded ------------------


@pytest.fixture
def bare_run(runs_dir) -> Path:
    """A run folder with a manifest and no artifacts: enough for the checks that come first."""
    run_dir = runs_dir / "bare"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"run": "bare", "artifacts": {}}), encoding="utf-8")
    return run_dir


@pytest.mark.parametrize("repo", ["just-a-name", "alice/models/lore", "alice/bad--name", "alice/", "al ice/lore"])
def test_a_repo_id_that_is_not_user_name_is_refused(bare_run, repo):
    result = run_ftw(bare_run.parent, "publish", "--run", "bare", "--repo", repo, "--dry-run", check=False, env=OFFLINE)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--repo {repo!r}" in result.stderr and "USER/NAME" in result.stderr
    assert not (bare_run / "publish").exists()


def test_a_run_without_a_quantized_gguf_is_refused(bare_run):
    result = run_ftw(bare_run.parent, "publish", "--run", "bare", "--repo", "alice/lore", "--dry-run", check=False)
    assert result.returncode == 2
    assert "has no quantized GGUF" in result.stderr and "ftw gguf --run bare" in result.stderr


def test_a_quant_the_run_lacks_says_how_to_make_it(bare_run):
    q4 = bare_run / "gguf" / "bare-Q4_K_M.gguf"
    q4.parent.mkdir()
    q4.write_bytes(b"")  # a quantized GGUF counts when its file is here (manifest.quantized_ggufs)
    data = {"run": "bare", "artifacts": {"gguf_q4_k_m": str(q4)}}
    (bare_run / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    args = ("publish", "--run", "bare", "--repo", "alice/lore", "--quant", "Q8_0", "--dry-run")
    result = run_ftw(bare_run.parent, *args, check=False)
    assert result.returncode == 2
    assert "no Q8_0 GGUF" in result.stderr and "ftw gguf --run bare --quant Q8_0" in result.stderr


def test_a_missing_token_is_refused_with_how_to_log_in(bare_run, tmp_path):
    empty_home = tmp_path / "hf-home"
    empty_home.mkdir()
    no_token = {
        "HF_TOKEN": "",
        "HUGGING_FACE_HUB_TOKEN": "",
        "HF_HOME": str(empty_home),
        "HF_TOKEN_PATH": str(empty_home / "token"),
        "HF_HUB_OFFLINE": "1",
    }
    result = run_ftw(bare_run.parent, "publish", "--run", "bare", "--repo", "alice/lore", check=False, env=no_token)
    assert result.returncode == 2
    assert "hf auth login" in result.stderr and "HF_TOKEN" in result.stderr
    assert not (bare_run / "publish").exists() and not (bare_run / "publish.partial").exists()
    assert os.listdir(empty_home) == []  # nothing written where huggingface_hub keeps its token
