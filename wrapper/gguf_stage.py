"""GGUF stage: llama.cpp's convert_hf_to_gguf to f16/bf16, then quantization (Q4_K_M by default).

The converter is vendor/llama.cpp's, run with that tree's own gguf-py, and the
quantizer is the llama.cpp compiled into llama-cpp-python from the same commit, so
the file is written and read by one llama.cpp. Each file is written under a .partial
name, checked with the gguf library, and only then renamed.

Between conversion and quantization the GGUF's chat template (tokenizer.chat_template,
what LM Studio and llama.cpp build prompts with) is checked against the training
format; where it differs, the training format is written in its place (wrapper/
fidelity.py), so every quantized file inherits a template that matches training.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wrapper import manifest, stages
from wrapper.errors import FtwError
from wrapper.paths import LLAMA_CPP_DIR
from wrapper.procs import run_with_status
from wrapper.ui import console, done

OUTTYPES = ("f16", "bf16")
# The merged model's weight files (safetensors, or the .bin LLaMA-Factory's legacy export writes).
WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "*.bin", "pytorch_model.bin.index.json")
WEIGHTS_REMOVED_NOTE = "WEIGHTS_REMOVED.txt"
# Quant types offered, by the names llama.cpp's quantize tool uses. Types that need an
# importance matrix (IQ2/IQ3 and such) are left out: nothing here makes one.
QUANT_TYPES = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K", "Q8_0", "Q3_K_M", "Q3_K_L", "Q2_K", "Q4_0", "IQ4_XS")


def ftype_of(kind: str) -> int:
    """llama.cpp's file type number (enum llama_ftype) for 'f16', 'bf16' or a quant name."""
    from gguf import LlamaFileType

    return int(LlamaFileType[f"MOSTLY_{kind.upper()}"])


def artifact_key(kind: str) -> str:
    return f"gguf_{kind.lower()}"


GGUF_MAGIC = b"GGUF"


def read_gguf(path: Path):
    """(the gguf library's reader, None) for a readable GGUF; else (None, what the file is instead, in words)."""
    from gguf import GGUFReader

    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        return None, f"can't be read ({exc.strerror})"
    if not head.startswith(GGUF_MAGIC):
        if head.startswith(b"version https://git-lfs"):
            return None, "is not a GGUF file but a Git LFS pointer (the download fetched the pointer, not the file)"
        if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
            return None, "is not a GGUF file but a web page (a download link that returned HTML)"
        return None, f"is not a GGUF file (it starts with {head[:8]!r}, a GGUF starts with {GGUF_MAGIC!r})"
    try:
        return GGUFReader(path), None
    except Exception as exc:  # the reader raises bare ValueError/struct errors on a cut-off file
        return None, f"is not a readable GGUF file, probably cut off ({path.stat().st_size} bytes; {exc})"


def gguf_problem(path: Path) -> str | None:
    """None for a file that reads as a GGUF; else what it is instead, in words."""
    return read_gguf(path)[1]


def verify_gguf(path: Path, expected_ftype: int) -> int:
    """Read the header back; return the tensor count. Raises if the file isn't what we asked for."""
    reader, problem = read_gguf(path)
    if problem is not None:
        raise FtwError(f"{path} {problem}")
    if not reader.tensors:
        raise FtwError(f"{path} holds no tensors")
    field = reader.fields.get("general.file_type")
    file_type = int(field.parts[field.data[0]][0]) if field else None
    if file_type != expected_ftype:
        raise FtwError(f"{path}: general.file_type is {file_type}, expected {expected_ftype}")
    return len(reader.tensors)


def write_chat_template(source: Path, target: Path, template: str, log_path: Path) -> None:
    """Copy `source` to `target` with `template` as tokenizer.chat_template (the gguf library's
    gguf_new_metadata, from the same gguf-py the converter uses)."""
    script = LLAMA_CPP_DIR / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"
    template_file = target.with_name(target.name + ".jinja")
    template_file.write_text(template, encoding="utf-8")
    try:
        run_with_status(
            [sys.executable, str(script), str(source), str(target), "--chat-template-file", str(template_file), "--force"],
            log_path, "gguf_new_metadata", "write chat template",
            env={"PYTHONPATH": str(LLAMA_CPP_DIR / "gguf-py"), "NO_LOCAL_GGUF": ""}, writes_to=target.parent,
        )
    finally:
        template_file.unlink(missing_ok=True)


def ensure_training_template(partial: Path, merged: Path, template_name: str, system: str | None,
                             expected_ftype: int, log_path: Path) -> None:
    """Leave the GGUF's chat template if it renders the training format, else write the training format."""
    from wrapper.fidelity import (
        GgufChat,
        check_gguf_template,
        jinja_candidates,
        training_format,
    )

    fmt = training_format(merged, template_name, system)
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
        console.print(f"[yellow]warning:[/yellow] LM Studio and llama.cpp will prompt this model differently from "
                      f"training ({reason}), and ftw has no chat template for '{template_name}' that renders the "
                      f"training format to write instead.", soft_wrap=True)
        return
    source, template = passing[0]
    rewritten = partial.with_name(partial.name.removesuffix(".partial") + ".chat.partial")
    rewritten.unlink(missing_ok=True)
    write_chat_template(partial, rewritten, template, log_path)
    count = verify_gguf(rewritten, expected_ftype)
    if GgufChat.read(rewritten).chat_template != template:
        raise FtwError(f"{rewritten}: the chat template did not read back as written")
    rewritten.replace(partial)
    done(f"chat template replaced by the training format ({source}; {count} tensors kept); it differed: {reason}")


@contextmanager
def removed_unless_finished(partial: Path) -> Iterator[None]:
    """The block writes `partial` and renames it when verified; on any failure or stop the partial file goes."""
    chat = partial.with_name(partial.name.removesuffix(".partial") + ".chat.partial")  # ensure_training_template's
    leftovers = (partial, chat, chat.with_name(chat.name + ".jinja"))
    for leftover in leftovers:  # from a run killed outright (kill -9, power cut)
        leftover.unlink(missing_ok=True)
    try:
        yield
    finally:
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)


def convert(merged: Path, target: Path, outtype: str, log_path: Path,
            template_name: str | None = None, system: str | None = None) -> None:
    converter = LLAMA_CPP_DIR / "convert_hf_to_gguf.py"
    if not converter.is_file():
        raise FtwError(f"{converter} is missing. Run `make setup` (it unpacks llama.cpp into vendor/).")
    partial = target.with_name(target.name + ".partial")
    with removed_unless_finished(partial):
        run_with_status(
            [sys.executable, str(converter), str(merged), "--outtype", outtype, "--outfile", str(partial)],
            log_path, "convert_hf_to_gguf", f"convert {outtype}",
            env={"PYTHONPATH": str(LLAMA_CPP_DIR / "gguf-py"), "NO_LOCAL_GGUF": ""}, writes_to=partial.parent,
        )
        count = verify_gguf(partial, ftype_of(outtype))
        if template_name is not None:
            ensure_training_template(partial, merged, template_name, system, ftype_of(outtype), log_path)
        partial.rename(target)
    done(f"{outtype} GGUF ({count} tensors, {target.stat().st_size / 2**20:.0f} MiB) -> {target}")


def quantize(source: Path, target: Path, quant: str, log_path: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    with removed_unless_finished(partial):
        run_with_status(
            [sys.executable, "-m", "wrapper.quantize", str(source), str(partial), str(ftype_of(quant))],
            log_path, f"llama.cpp quantize {quant}", f"quantize {quant}", writes_to=partial.parent,
        )
        count = verify_gguf(partial, ftype_of(quant))
        partial.rename(target)
    done(f"{quant} GGUF ({count} tensors, {target.stat().st_size / 2**20:.0f} MiB) -> {target}")


def check_quant_names(quants: list[str]) -> list[str]:
    normalised = [q.upper() for q in quants]
    for quant in normalised:
        if quant not in QUANT_TYPES:
            raise FtwError(f"--quant {quant}: unknown type. Choose from {', '.join(QUANT_TYPES)}.")
    return normalised


def check_gguf_disk(merged: Path, gguf_dir: Path, outtype: str, quants: list[str]) -> None:
    """Stop before converting when the unquantized GGUF and the `quants` still to be made don't fit the free disk."""
    from wrapper.diskcheck import check_free_space, gguf_needs, weights_of

    _, params = weights_of(merged)
    if params:
        check_free_space(gguf_dir, gguf_needs(params, quants, outtype), "ftw gguf")


def check_weights_suit(merged: Path, outtype: str, run: str) -> None:
    """A bf16 GGUF made from weights ftw export stored as float16 would lose what bf16 holds and f16 doesn't."""
    import json

    from wrapper.merge import read_header

    if outtype != "bf16":
        return
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    if (config.get("dtype") or config.get("torch_dtype")) != "bfloat16":
        return
    if any(info.dtype == "F16" for path in merged_weight_files(merged) if path.suffix == ".safetensors"
           for info in read_header(path).values()):
        raise FtwError(f"{merged} holds the weights as float16 (made for an f16 GGUF); for a bf16 GGUF, merge "
                       f"them in the base's dtype first: ftw export --run {run} --weights-dtype base")


def merged_weight_files(merged: Path) -> list[Path]:
    return sorted(path for pattern in WEIGHT_FILES for path in merged.glob(pattern) if path.is_file())


def remove_intermediates(run_dir: Path, merged: Path, full: Path, outtype: str, quantized: dict[str, Path]) -> None:
    """Free the disk the merged weights and the unquantized GGUF hold, once the quantized files are verified.

    The manifest is updated first: a stop between the two leaves stray files, never a
    manifest that names a file that is gone. The merged folder keeps its config and
    tokenizer, which the Modelfile, smoke, chat and eval stages read.
    """
    for quant, path in quantized.items():
        verify_gguf(path, ftype_of(quant))
    # Only the run's own merge is ours to thin out, never a folder the manifest was pointed at.
    weights = merged_weight_files(merged) if merged.resolve() == (run_dir / "merged").resolve() else []
    freed = {}
    if weights:
        freed["merged"] = sum(path.stat().st_size for path in weights)
        manifest.record_removed(run_dir, "merged", {"weights": [path.name for path in weights], "bytes": freed["merged"]})
        (merged / WEIGHTS_REMOVED_NOTE).write_text(
            "The merged weights were removed by `ftw gguf` once the quantized GGUF was verified, to free disk.\n"
            f"Make them again with: ftw export --run {run_dir.name} --force  (and keep them next time with\n"
            "ftw gguf --keep-intermediates). Config and tokenizer files stay here for the later stages.\n",
            encoding="utf-8")
        for path in weights:
            path.unlink()
    if full.is_file():
        key = artifact_key(outtype)
        freed[key] = full.stat().st_size
        manifest.record_removed(run_dir, key, {"file": str(full), "bytes": freed[key]})
        full.unlink()
    if freed:
        done(f"removed the intermediates ({', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in freed.items())}); "
             "--keep-intermediates keeps them (ftw eval needs them)")


def gguf_inputs(run_dir: Path, plan, merged: Path, outtype: str) -> stages.StageInputs:
    """The merged model (as the export stage recorded it), precision, chat template and converter."""
    from wrapper.vendor import installed_commit

    merged_id = stages.recorded_digest(run_dir, "merged") or stages.folder_digest(merged)
    return stages.StageInputs(artifact_key(outtype), {
        "merged model": merged_id, "outtype": outtype,
        "chat template": stages.value_digest([plan.template, plan.system]), "llama.cpp": str(installed_commit()),
    })


def quant_inputs(full_inputs: stages.StageInputs, quant: str) -> stages.StageInputs:
    return stages.StageInputs(artifact_key(quant), {
        "unquantized GGUF": full_inputs.digest, "type": quant, "llama.cpp": full_inputs.values["llama.cpp"],
    })


def make_ggufs(run_dir: Path, quants: list[str], outtype: str = "f16", force: bool = False,
               keep_intermediates: bool = False) -> dict[str, Path]:
    quants = check_quant_names(quants)
    if outtype not in OUTTYPES:
        raise FtwError(f"--outtype {outtype}: choose {' or '.join(OUTTYPES)}")
    plan = manifest.plan_of(run_dir)
    merged = manifest.artifact(run_dir, "merged", "ftw export")
    recorded = manifest.load(run_dir)["artifacts"]
    gguf_dir = run_dir / "gguf"
    gguf_dir.mkdir(exist_ok=True)
    log_path = run_dir / "logs" / "gguf.log"
    full = gguf_dir / f"{plan.run}-{outtype}.gguf"
    targets = {quant: gguf_dir / f"{plan.run}-{quant}.gguf" for quant in quants}

    full_inputs = gguf_inputs(run_dir, plan, merged, outtype)
    inputs = {outtype: full_inputs, **{quant: quant_inputs(full_inputs, quant) for quant in quants}}

    def up_to_date(kind: str, path: Path) -> bool:
        if force or artifact_key(kind) not in recorded or not path.is_file():
            return False
        changes = inputs[kind].changes_from(stages.recorded_inputs(run_dir, artifact_key(kind)))
        if changes:
            console.print(f"{path.name}: changed since it was made: {stages.describe(changes)}", soft_wrap=True)
        return not changes

    to_quantize = [quant for quant, target in targets.items() if not up_to_date(quant, target)]
    removed = manifest.removed_intermediates(run_dir)
    made: dict[str, Path] = {}
    full_up_to_date = up_to_date(outtype, full)
    if to_quantize or (artifact_key(outtype) not in removed and not full_up_to_date):
        if not full_up_to_date:
            if "merged" in removed:
                raise FtwError(f"the merged weights were removed after the last quantization, to free disk; "
                               f"make them again first: ftw export --run {plan.run} --force")
            console.print(f"Converting {merged} with llama.cpp; full log: {log_path}")
            check_weights_suit(merged, outtype, plan.run)
            check_gguf_disk(merged, gguf_dir, outtype, to_quantize)
            convert(merged, full, outtype, log_path, plan.template, plan.system)
            manifest.record_artifacts(run_dir, **{artifact_key(outtype): full, "gguf_log": log_path})
            stages.record_inputs(run_dir, full_inputs)
        made[artifact_key(outtype)] = full
    for quant in quants:
        if quant in to_quantize:
            quantize(full, targets[quant], quant, log_path)
            manifest.record_artifacts(run_dir, **{artifact_key(quant): targets[quant]})
            stages.record_inputs(run_dir, inputs[quant])
        else:
            done(f"{quant} GGUF up to date: {targets[quant]} (--force makes it again)")
        made[artifact_key(quant)] = targets[quant]
    if not keep_intermediates and quants:
        remove_intermediates(run_dir, merged, full, outtype, targets)
        made.pop(artifact_key(outtype), None)
    return made
