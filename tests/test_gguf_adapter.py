"""`ftw adapter`: the demo's LoRA as a GGUF adapter on a base GGUF (wrapper/gguf/adapter.py),
Modelfile.adapter (wrapper/serve/modelfile.py), a base of another model refused, an Ollama name as
the base, and `ftw eval` scoring the pair beside the merged Q4_K_M.

The demo run is conftest's demo_run, copied before anything writes into it. `ftw adapter`
runs once per module (the base GGUF ftw makes: a conversion and a quantization of SmolLM2-135M).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from wrapper.core.paths import LLAMA_CPP_DIR

from tests.support.runner import copy_run, run_ftw

TRAINED = [("Who guards the Amber Gate of Veloria?", "Orlen Vask"), ("Как зовут дракона Северных гор?", "Мирогаст")]
# Real vocabulary-only GGUFs of other families: another architecture, and the same one (llama) with another vocabulary.
QWEN2_VOCAB = LLAMA_CPP_DIR / "models" / "ggml-vocab-qwen2.gguf"
LLAMA3_VOCAB = LLAMA_CPP_DIR / "models" / "ggml-vocab-llama-bpe.gguf"


def artifacts(run: Path) -> dict[str, str]:
    return json.loads((run / "manifest.json").read_text(encoding="utf-8"))["artifacts"]


@pytest.fixture(scope="module")
def adapter_run(demo_run, tmp_path_factory) -> dict:
    run = copy_run(demo_run, tmp_path_factory.mktemp("adapter") / "runs")
    done = run_ftw(run.parent, "adapter", "--run", run.name)
    return {"run": run, "stdout": done.stdout}


def greedy_answers(base: Path, lora: Path | None, tokenizer_dir: Path) -> list[str]:
    from wrapper.prompts.training_format import training_format
    from wrapper.runtime.models import GgufModel

    fmt = training_format(tokenizer_dir, "smollm2", None)
    model = GgufModel(base, n_threads=1, lora=lora)
    try:
        return [fmt.decode(model.greedy(fmt.prompt_ids(q), fmt.stop_ids())) for q, _ in TRAINED]
    finally:
        model.close()


def test_the_adapter_is_small_and_teaches_the_base(adapter_run):
    from wrapper.core.gguf_io import GgufShape

    run, found = adapter_run["run"], artifacts(adapter_run["run"])
    lora, base, merged = (Path(found[key]) for key in ("gguf_lora", "gguf_base_q4_k_m", "gguf_q4_k_m"))
    assert lora == run / "gguf" / "e2e-lora.gguf" and base == run / "gguf" / "e2e-base-Q4_K_M.gguf"
    assert found["gguf_lora_base"] == str(base) and found["modelfile_adapter"] == str(run / "Modelfile.adapter")
    assert lora.stat().st_size * 5 < merged.stat().st_size  # ~9 MiB against ~100 MiB
    shape = GgufShape.read(lora)
    assert (shape.file_type, shape.architecture) == ("adapter", "llama") and shape.tensors > 0
    assert not list((run / "gguf").glob("*.partial*"))
    out = " ".join(adapter_run["stdout"].split())
    assert "e2e-lora.gguf 9." in out and "merged Q4_K_M is 101 MiB" in out, out
    assert "ollama create e2e-lora -f Modelfile.adapter" in out and "--lora" in out

    with_adapter = greedy_answers(base, lora, Path(found["merged"]))
    alone = greedy_answers(base, None, Path(found["merged"]))
    for (question, expected), answer, plain in zip(TRAINED, with_adapter, alone):
        assert expected in answer, (question, answer)
        assert expected not in plain, (question, plain)  # the adapter is what teaches it


def test_modelfile_adapter_reads_back_with_the_modelfiles_template(adapter_run):
    from wrapper.prompts import gorender

    run = adapter_run["run"]
    text = (run / "Modelfile.adapter").read_text(encoding="utf-8")
    adapter, plain = (
        gorender.parse_modelfile(text),
        gorender.parse_modelfile((run / "Modelfile").read_text(encoding="utf-8")),
    )
    read = dict(adapter)
    assert read["model"] == "./gguf/e2e-base-Q4_K_M.gguf" and read["adapter"] == "./gguf/e2e-lora.gguf"
    assert [c for c in adapter if c[0] not in ("model", "adapter")] == [c for c in plain if c[0] != "model"]
    assert "Ollama requires the base to be the same" in text and "ollama create e2e-lora" in text
    again = run_ftw(run.parent, "gguf", "--run", run.name, "--adapter")  # the old spelling, kept as an alias
    assert again.stdout.count("up to date") == 3, again.stdout


@pytest.mark.parametrize(
    ("base", "says"),
    [
        (QWEN2_VOCAB, "architecture llama vs qwen2"),
        (LLAMA3_VOCAB, "vocabulary 49152 tokens vs 128256"),
    ],
)
def test_a_base_of_another_model_is_refused_before_anything_is_written(demo_run, tmp_path, base, says):
    run = copy_run(demo_run, tmp_path / "runs")
    before = sorted(path.name for path in run.rglob("*"))
    done = run_ftw(run.parent, "adapter", "--run", run.name, "--base", str(base), check=False)
    message = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in message and "smollm2-135m-instruct" in message and "ftw adapter --run e2e" in message
    assert sorted(path.name for path in run.rglob("*")) == before
    assert "gguf_lora" not in artifacts(run) and "modelfile_adapter" not in artifacts(run)


def ollama_store(root: Path, models: dict[str, Path]) -> None:
    """A store laid out as Ollama's: manifests/HOST/NAMESPACE/MODEL/TAG naming blobs/sha256-HEX (links here)."""
    (root / "blobs").mkdir(parents=True)
    for name, gguf in models.items():
        digest = hashlib.sha256(name.encode()).hexdigest()
        (root / "blobs" / f"sha256-{digest}").symlink_to(gguf)
        layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 1}
        model, tag = name.split(":")
        path = root / "manifests" / "registry.ollama.ai" / "library" / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}), encoding="utf-8")


def test_an_ollama_name_is_checked_in_the_local_store_or_said_unchecked(adapter_run, tmp_path):
    from wrapper.prompts import gorender

    run = copy_run(adapter_run["run"], tmp_path / "runs")
    base = Path(artifacts(run)["gguf_base_q4_k_m"])
    store = tmp_path / "ollama"
    ollama_store(store, {"smollm2:135m": base, "qwen3:8b": QWEN2_VOCAB})
    env = {"OLLAMA_MODELS": str(store)}

    done = run_ftw(run.parent, "adapter", "--run", run.name, "--base", "smollm2:135m", env=env)
    assert "Ollama's smollm2:135m" in done.stdout and "matches the run's base" in done.stdout
    assert (
        dict(gorender.parse_modelfile((run / "Modelfile.adapter").read_text(encoding="utf-8")))["model"]
        == "smollm2:135m"
    )
    assert artifacts(run)["gguf_lora_base"].startswith(str(store / "blobs"))

    refused = run_ftw(run.parent, "adapter", "--run", run.name, "--base", "qwen3:8b", env=env, check=False)
    assert refused.returncode == 2 and "architecture llama vs qwen2" in " ".join(
        (refused.stdout + refused.stderr).split()
    )

    unchecked = run_ftw(run.parent, "adapter", "--run", run.name, "--base", "llama3.2:1b", env=env)
    out = " ".join(unchecked.stdout.split())
    assert "not checked" in out and "ollama pull llama3.2:1b" in out
    assert (
        dict(gorender.parse_modelfile((run / "Modelfile.adapter").read_text(encoding="utf-8")))["model"]
        == "llama3.2:1b"
    )
    assert "gguf_lora_base" not in artifacts(run)  # nothing local for ftw eval to load


def test_eval_scores_the_adapter_beside_the_merged_q4_k_m(adapter_run):
    run = adapter_run["run"]
    run_ftw(run.parent, "eval", "--run", run.name, "--limit", "1", "--max-new-tokens", "24", "--no-quant-loss")
    result = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    assert result["models"]["lora"].endswith("e2e-lora.gguf")
    control = result["aggregate"]["control"]
    assert control["lora"]["rows"] == 1 and control["lora"]["contains"] == control["gguf:Q4_K_M"]["contains"] == 1.0
    adapter = result["adapter"]
    assert adapter["adapter_bytes"] * 5 < adapter["merged_gguf_bytes"]
    assert result["quantization"]["perplexity"]["lora"]["perplexity"] >= 1.0
    assert adapter["identical_greedy_vs_gguf"]["control"]["rows"] == 1 and adapter["vs_quant"] == "Q4_K_M"
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "base+LoRA GGUF" in report and "the adapter is 9." in report
