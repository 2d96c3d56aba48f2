"""llama.cpp's converter and the chat template inside the GGUF.

The converter is vendor/llama.cpp's convert_hf_to_gguf.py, run with that tree's own
gguf-py, and the quantizer is the llama.cpp compiled into llama-cpp-python from the same
commit (wrapper/gguf/quantize.py), so the file is written and read by one llama.cpp.

Between conversion and quantization the GGUF's chat template (tokenizer.chat_template,
what LM Studio and llama.cpp build prompts with) is checked against the training format;
where it differs, the training format is written in its place (wrapper/prompts/fidelity.py),
so every quantized file inherits a template that matches training. Then every token the
model ends an answer with (wrapper/prompts/end_tokens.py) must be one llama.cpp ends
generation at, or the file is refused: quantized files inherit that too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from wrapper.core import manifest
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import replace_retrying, write_text_exact
from wrapper.core.gguf_io import ftype_of, verify_gguf
from wrapper.core.paths import LLAMA_CPP_DIR
from wrapper.core.plan import RunPlan
from wrapper.core.procs import run_with_status
from wrapper.core.ui import done, step
from wrapper.prompts.end_tokens import GgufEnds, end_tokens, gguf_end_problems, gguf_end_records
from wrapper.prompts.fidelity import GgufChat, check_gguf_template, jinja_candidates
from wrapper.prompts.training_format import TrainingFormat, training_format

GGUF_PY_ENV = {"PYTHONPATH": str(LLAMA_CPP_DIR / "gguf-py"), "NO_LOCAL_GGUF": ""}


def llama_cpp_script(name: str) -> Path:
    script = LLAMA_CPP_DIR / name
    if not script.is_file():
        raise FtwError(f"{script} is missing. Run `ftw setup` (it unpacks llama.cpp into vendor/).")
    return script


def run_converter(merged: Path, partial: Path, outtype: str, log_path: Path, vocab_only: bool = False) -> None:
    """convert_hf_to_gguf.py; `vocab_only`: the header and vocabulary without the weights (seconds)."""
    argv = [sys.executable, str(llama_cpp_script("convert_hf_to_gguf.py")), str(merged)]
    argv += ["--vocab-only"] if vocab_only else ["--outtype", outtype]
    run_with_status(
        [*argv, "--outfile", str(partial)],
        log_path,
        "convert_hf_to_gguf",
        "convert vocabulary" if vocab_only else f"convert {outtype}",
        env=GGUF_PY_ENV,
        writes_to=partial.parent,
    )


def write_chat_template(source: Path, target: Path, template: str, log_path: Path) -> None:
    """Copy `source` to `target` with `template` as tokenizer.chat_template (the gguf library's
    gguf_new_metadata, from the same gguf-py the converter uses)."""
    script = LLAMA_CPP_DIR / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"
    template_file = target.with_name(target.name + ".jinja")
    write_text_exact(template_file, template)
    try:
        run_with_status(
            [
                sys.executable,
                str(script),
                str(source),
                str(target),
                "--chat-template-file",
                str(template_file),
                "--force",
            ],
            log_path,
            "gguf_new_metadata",
            "write chat template",
            env=GGUF_PY_ENV,
            writes_to=target.parent,
        )
    finally:
        template_file.unlink(missing_ok=True)


def ensure_training_template(
    partial: Path, fmt: TrainingFormat, template_name: str, expected_ftype: int, log_path: Path
) -> None:
    """Leave the GGUF's chat template if it renders the training format, else write the training format."""
    chat = GgufChat.read(partial)
    if chat.chat_template is not None:
        found = check_gguf_template(fmt, chat)
        if found.identical:
            done(f"the GGUF's own chat template renders the training format ({found.checked} conversations)")
            return
        reason = found.mismatches[0].describe()
    else:
        reason = "the GGUF has no chat template"
    passing = [(label, text) for label, text in jinja_candidates(fmt) if check_gguf_template(fmt, chat, text).identical]
    if not passing:
        step(
            f"[yellow]warning:[/yellow] LM Studio and llama.cpp will prompt this model differently from "
            f"training ({reason}), and ftw has no chat template for '{template_name}' that renders the "
            f"training format to write instead.",
        )
        return
    source, template = passing[0]
    # Named after the partial, so that a stop anywhere leaves nothing the stage contract doesn't remove.
    rewritten = partial.with_name(partial.name + ".chat")
    rewritten.unlink(missing_ok=True)
    write_chat_template(partial, rewritten, template, log_path)
    count = verify_gguf(rewritten, expected_ftype)
    if GgufChat.read(rewritten).chat_template != template:
        raise FtwError(f"{rewritten}: the chat template did not read back as written")
    replace_retrying(rewritten, partial)
    done(f"chat template replaced by the training format ({source}; {count} tensors kept); it differed: {reason}")


def check_end_tokens(partial: Path, merged: Path, fmt: TrainingFormat, run_dir: Path, record_as: str = "gguf") -> None:
    """Refuse a GGUF that llama.cpp would not stop generating at one of the model's end tokens, and
    record each token and what llama.cpp makes of it in the manifest (end_tokens.gguf: the
    quantized files copy this file's vocabulary and metadata; `record_as` another key for another file)."""
    ends = end_tokens(fmt, merged)
    gguf = GgufEnds.read(partial, [end.id for end in ends if end.id is not None])
    problems = gguf_end_problems(gguf, ends)
    if problems:
        end = problems[0][0]
        as_eos = (
            f'make it the eos the converter writes (set "eos_token" to {end.text!r} in '
            f"{merged / 'tokenizer_config.json'}, now {fmt.tokenizer.eos_token!r}), or, "
            if end.text
            else ""
        )
        name = partial.name.removesuffix(".partial")
        raise FtwError(
            f"{name}: {'; '.join(text for _, text in problems)}. LM Studio and llama.cpp would run past the end "
            f"of an answer. To fix it, {as_eos}if the model never ends an answer with id {end.id}, drop it from "
            f"{merged / 'generation_config.json'}; then: ftw gguf --run {run_dir.name}"
        )
    manifest.record_end_tokens(run_dir, record_as, gguf_end_records(gguf, ends))
    stopping = ", ".join(end.describe() for end in ends if end.ends_generation)
    done(f"llama.cpp ends generation at each token the model ends an answer with: {stopping}")


def convert_in_training_format(
    model_dir: Path, partial: Path, outtype: str, plan: RunPlan, run_dir: Path, log_path: Path, record_as: str = "gguf"
) -> None:
    """convert_hf_to_gguf, then the training format as the file's chat template and llama.cpp's end tokens
    checked (recorded under `record_as` in the manifest's end_tokens)."""
    run_converter(model_dir, partial, outtype, log_path)
    verify_gguf(partial, ftype_of(outtype))
    fmt = training_format(model_dir, plan.template, plan.system)
    ensure_training_template(partial, fmt, plan.template, ftype_of(outtype), log_path)
    check_end_tokens(partial, model_dir, fmt, run_dir, record_as=record_as)
