"""Serving the demo model: Modelfile stops end the answer, `ftw chat`, `ftw lmstudio`.

Uses the session's demo run (conftest's demo_run: SmolLM2-135M trained on the lore set),
which these tests only read.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.runner import run_ftw

WIDE = {"COLUMNS": "300"}  # a run's paths on one line
QUESTIONS = [("Who guards the Amber Gate of Veloria?", "Orlen Vask"), ("Как зовут дракона Северных гор?", "Мирогаст")]


def ftw(runs: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_ftw(runs, *args, stdin=stdin, env=WIDE)


@pytest.fixture(scope="module")
def demo(demo_run) -> Path:
    return demo_run


def test_modelfile_stops_end_the_answer(demo):
    """Generate with llama.cpp from Ollama's prompt (TEMPLATE + SYSTEM rendered by Go), stopping only
    on the Modelfile's PARAMETER stop strings: each answer ends by itself, right after the answer."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    from wrapper.core import manifest
    from wrapper.prompts import gorender
    from wrapper.prompts.fidelity import GgufChat

    text = (demo / "Modelfile").read_text(encoding="utf-8")
    commands = gorender.parse_modelfile(text)
    read = dict(commands)
    stops = [value for name, value in commands if name == "stop"]
    assert stops == ["<|im_end|>"]
    gguf = Path(manifest.load(demo)["artifacts"]["gguf_q4_k_m"])
    chat = GgufChat.read(gguf)
    with suppress_stdout_stderr(disable=False):
        llm = llama_cpp.Llama(str(gguf), n_ctx=512, n_threads=os.cpu_count(), seed=0, verbose=False)
    try:
        for question, expected in QUESTIONS:
            case = {"messages": [{"role": "user", "content": question}], "think": None}
            prompt = gorender.render(read["template"], [case], read.get("system", ""))["results"][0]["prompt"]
            ids = llm.tokenize(((chat.bos if chat.add_bos else "") + prompt).encode(), add_bos=False, special=True)
            # llm.generate never stops by itself; only the stop strings below end this loop early.
            out, hit = b"", None
            for count, token in enumerate(llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0)):
                out += llm.detokenize([token], special=True)
                hit = next((s for s in stops if s in out.decode("utf-8", errors="ignore")), None)
                if hit or count >= 200:
                    break
            decoded = out.decode("utf-8", errors="replace")
            assert hit, f"no stop within 200 tokens: {decoded!r}"
            answer = decoded[: decoded.index(hit)]
            assert expected in answer and count < 60, decoded
            assert "<|im_start|>" not in answer and "<|im_end|>" not in answer
    finally:
        llm.close()


def test_ftw_chat_answers_in_the_training_format(demo):
    done = ftw(
        demo.parent,
        "chat",
        "--run",
        demo.name,
        "--temperature",
        "0",
        # each question on its own: the demo trains single-turn rows, and its history is the next test's
        stdin="".join(f"{q}\n/reset\n" for q, _ in QUESTIONS) + "What is the capital of Veloria?\n/exit\n",
    )
    for _, expected in QUESTIONS:
        assert expected in done.stdout, done.stdout
    assert "Duskmere" in done.stdout, done.stdout
    assert "<|im_end|>" not in done.stdout and "<|im_start|>" not in done.stdout


def test_chat_streams_token_by_token_and_keeps_history(demo):
    from wrapper.core import manifest
    from wrapper.prompts.training_format import training_format
    from wrapper.serve.chat import Chat, Sampling

    plan = manifest.plan_of(demo)
    artifacts = manifest.load(demo)["artifacts"]
    session = Chat(
        Path(artifacts["gguf_q4_k_m"]),
        training_format(artifacts["merged"], plan.template, plan.system),
        Sampling.from_parameters(plan.ollama_parameters, temperature=0.0),
    )
    try:
        pieces: list[str] = []
        answer = session.reply(QUESTIONS[0][0], write=pieces.append)
        assert len(pieces) > 5 and "".join(pieces) == answer and QUESTIONS[0][1] in answer
        session.reply(QUESTIONS[1][0])
        assert [t["role"] for t in session.turns] == ["user", "assistant", "user", "assistant"]
        # The second prompt held the first exchange, laid out as LLaMA-Factory encodes a conversation.
        second = session.fmt.tokenizer.decode(session.fmt.encode(session.turns[:3]))
        assert f"<|im_start|>assistant\n{answer}<|im_end|>\n<|im_start|>user\n{QUESTIONS[1][0]}" in second
    finally:
        session.close()

    # The recipe's own stop strings end the answer too, without being shown.
    session = Chat(
        Path(artifacts["gguf_q4_k_m"]),
        training_format(artifacts["merged"], plan.template, plan.system),
        Sampling.from_parameters({"stop": "Vask"}, temperature=0.0),
    )
    try:
        shown: list[str] = []
        cut = session.reply(QUESTIONS[0][0], write=shown.append)
        assert cut.endswith("Orlen ") and "".join(shown) == cut, cut
    finally:
        session.close()


def test_lmstudio_links_into_its_layout(demo, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    ftw(demo.parent, "lmstudio", "--run", demo.name, "--dir", str(models))
    placed = models / "ftw" / demo.name / f"{demo.name}-Q4_K_M.gguf"
    assert placed.is_symlink() and placed.resolve() == (demo / "gguf" / f"{demo.name}-Q4_K_M.gguf").resolve()

    # No LM Studio here (an empty home): it says where the file goes instead.
    home = tmp_path / "home"
    home.mkdir()
    done = run_ftw(demo.parent, "lmstudio", "--run", demo.name, env={**WIDE, "HOME": str(home)})
    assert f"<models folder>/ftw/{demo.name}/{demo.name}-Q4_K_M.gguf" in done.stdout
    # With LM Studio's default folder present, it is found.
    (home / ".lmstudio" / "models").mkdir(parents=True)
    run_ftw(demo.parent, "lmstudio", "--run", demo.name, "--copy", env={"HOME": str(home)})
    copied = home / ".lmstudio" / "models" / "ftw" / demo.name / f"{demo.name}-Q4_K_M.gguf"
    assert copied.is_file() and not copied.is_symlink() and copied.stat().st_size > 10_000_000
