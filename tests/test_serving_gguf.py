"""`ftw gguf` replaces a chat template that differs from training, before quantizing.

The real CLI on the tiny random Qwen2 of tests/support/models.py, whose tokenizer carries the
Qwen2 vocabulary's own chat template (default system "You are a helpful assistant"),
while the recipe trains LLaMA-Factory's `qwen` template with its own Russian system
prompt: the case FACTS.md describes. Training and export are skipped (the tiny model
stands in for merged/); conversion, the template step, quantization and the Modelfile
are the real stages.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.models import tiny_qwen2_dir, write_alpaca_dataset
from tests.support.runner import run_ftw

# Real conversions, quantizations or training runs: minutes (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow

SYSTEM = "Ты — юрист. Отвечай по делу, ссылайся на статьи."


def ftw(runs: Path, *args: str) -> str:
    return run_ftw(runs, *args, timeout=600, env={"COLUMNS": "400"}).stdout  # its messages name long paths


def test_ftw_gguf_writes_the_training_template_into_every_file(tmp_path):
    from wrapper.core import manifest
    from wrapper.core.gguf_io import ftype_of
    from wrapper.gguf.convert import ensure_training_template
    from wrapper.prompts.fidelity import GgufChat, check_gguf_template, embedded_template
    from wrapper.prompts.training_format import training_format

    data = write_alpaca_dataset(tmp_path / "tiny.json")
    recipe = tmp_path / "lawyer.yaml"
    recipe.write_text(
        f'model:\n  base: {tiny_qwen2_dir()}\n  template: qwen\nsystem: "{SYSTEM}"\n'
        f"dataset:\n  - {data}\nollama:\n  parameters: {{temperature: 0.3, num_ctx: 2048}}\n",
        encoding="utf-8",
    )
    runs = tmp_path / "runs"
    ftw(runs, "render", "--recipe", str(recipe), "--profile", "cpu", "--run", "lawyer")
    run_dir = runs / "lawyer"
    manifest.record_artifacts(run_dir, merged=tiny_qwen2_dir())  # stands in for `ftw export`

    out = ftw(runs, "gguf", "--run", "lawyer", "--keep-intermediates")  # the f16 is checked too
    assert "chat template replaced by the training format" in out, out
    assert "You are a helpful assistant" in out, out  # the reason: the shipped template's default system

    fmt = training_format(tiny_qwen2_dir(), "qwen", SYSTEM)
    expected = embedded_template("qwen", SYSTEM)
    artifacts = manifest.load(run_dir)["artifacts"]
    for key in ("gguf_f16", "gguf_q4_k_m"):  # the quantized file inherits the template
        chat = GgufChat.read(Path(artifacts[key]))
        assert chat.chat_template == expected, key
        report = check_gguf_template(fmt, chat)
        assert report.identical and report.checked >= 12, report.summary()
        assert SYSTEM in chat.render([{"role": "user", "content": "Привет"}], None)
    assert not [p for p in run_dir.rglob("*") if ".partial" in p.name or p.suffix == ".jinja"]

    # The Modelfile stage reads its own Modelfile back as Ollama does and renders it with Go.
    out = ftw(runs, "modelfile", "--run", "lawyer")
    assert "match the training format" in out, out
    modelfile = (run_dir / "Modelfile").read_text(encoding="utf-8")
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile

    # A template that already renders the training format is left alone.
    f16 = Path(artifacts["gguf_f16"])
    before = f16.stat().st_mtime_ns
    ensure_training_template(f16, fmt, "qwen", ftype_of("f16"), tmp_path / "again.log")
    assert f16.stat().st_mtime_ns == before and not (tmp_path / "again.log").exists()

    # Without --keep-intermediates the f16 goes, but a merged folder outside the run (here the
    # shared fixture the manifest was pointed at) is never thinned out.
    ftw(runs, "gguf", "--run", "lawyer")
    assert not f16.exists() and Path(manifest.load(run_dir)["artifacts"]["gguf_q4_k_m"]).is_file()
    assert (tiny_qwen2_dir() / "model.safetensors").is_file()
