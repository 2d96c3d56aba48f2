"""GGUF stage: the merged model to an f16 (or bf16) GGUF with llama.cpp's converter, then
quantized (Q4_K_M by default); each file is a stage of the contract (wrapper/core/stage.py):
written under a .partial name, read back with the gguf library, only then renamed.

With --imatrix, an importance matrix computed on the run's training rows (wrapper/gguf/imatrix.py)
goes between the two, and llama.cpp's own llama-quantize uses it; without, the quantizer is the
library inside llama-cpp-python (nothing to build).

Once the quantized files are verified, the merged weights and the unquantized GGUF are
removed to free the disk, unless --keep-intermediates (ftw eval needs them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wrapper.core import artifacts, manifest, stage
from wrapper.core.cpu import cpu_jobs
from wrapper.core.disk import check_free_space
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_exact
from wrapper.core.gguf_io import NEEDS_IMATRIX, QUANT_BITS, QUANT_TYPES, ftype_of, verify_gguf
from wrapper.core.llama_tools import tool
from wrapper.core.paths import llama_cpp_commit
from wrapper.core.plan import RunPlan
from wrapper.core.platform import ToolFolder
from wrapper.core.procs import run_with_status
from wrapper.core.safetensors_io import model_weights, read_header
from wrapper.core.ui import done, step
from wrapper.gguf.convert import convert_in_training_format
from wrapper.gguf.imatrix import ImatrixStage, calibration
from wrapper.gguf.quantize import MAX_BUF_BYTES
from wrapper.prompts.training_format import training_format

OUTTYPES = ("f16", "bf16")
# The merged model's weight files (safetensors, or the .bin LLaMA-Factory's legacy export writes).
WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "*.bin", "pytorch_model.bin.index.json")
WEIGHTS_REMOVED_NOTE = "WEIGHTS_REMOVED.txt"


def mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.0f} MiB"


class ConvertStage:
    """The unquantized GGUF, with the training format as its chat template."""

    force_says = "makes it again"

    def __init__(self, run_dir: Path, plan: RunPlan, merged: Path, outtype: str):
        self.run_dir, self.key = run_dir, artifacts.gguf(outtype)
        self.target = run_dir / "gguf" / f"{plan.run}-{outtype}.gguf"
        self.plan, self.merged, self.outtype = plan, merged, outtype
        self.title = f"{outtype} GGUF"
        self.log_path = run_dir / "logs" / "gguf.log"
        self.logs = {artifacts.GGUF_LOG: self.log_path}
        self.quants_to_make: list[str] = []  # for the disk check

    def inputs(self) -> stage.StageInputs:
        """The merged model (as the export stage recorded it), precision, chat template and converter."""
        merged_id = stage.recorded_digest(self.run_dir, artifacts.MERGED) or stage.folder_digest(self.merged)
        return stage.StageInputs(
            self.key,
            {
                "merged model": merged_id,
                "outtype": self.outtype,
                "chat template": stage.value_digest([self.plan.template, self.plan.system]),
                "llama.cpp": str(llama_cpp_commit()),
            },
        )

    def make(self, partial: Path) -> None:
        if artifacts.MERGED in manifest.removed_intermediates(self.run_dir):
            raise FtwError(
                f"the merged weights were removed after the last quantization, to free disk; "
                f"make them again first: ftw export --run {self.plan.run} --force"
            )
        step(f"Converting {self.merged} with llama.cpp; full log: {self.log_path}")
        check_weights_suit(self.merged, self.outtype, self.plan.run)
        check_gguf_disk(self.merged, partial.parent, self.outtype, self.quants_to_make)
        convert_in_training_format(self.merged, partial, self.outtype, self.plan, self.run_dir, self.log_path)

    def verify(self, partial: Path) -> str:
        return f"{verify_gguf(partial, ftype_of(self.outtype))} tensors, {mib(partial)}"


class QuantizeStage:
    force_says = "makes it again"

    def __init__(
        self,
        run_dir: Path,
        plan: RunPlan,
        source: ConvertStage,
        source_inputs: stage.StageInputs,
        quant: str,
        imatrix: ImatrixStage | None = None,
    ):
        self.run_dir, self.key = run_dir, artifacts.gguf(quant)
        self.target = run_dir / "gguf" / f"{plan.run}-{quant}.gguf"
        self.logs: dict[str, Path] = {}
        self.source, self.source_inputs, self.quant, self.imatrix = source, source_inputs, quant, imatrix
        self.title = f"{quant} GGUF" + (" (importance matrix)" if imatrix else "")

    def inputs(self) -> stage.StageInputs:
        values = {
            "unquantized GGUF": self.source_inputs.digest,
            "type": self.quant,
            "llama.cpp": self.source_inputs.values["llama.cpp"],
        }
        if self.imatrix:
            values["importance matrix"] = self.imatrix.inputs().digest
        return stage.StageInputs(self.key, values)

    def make(self, partial: Path) -> None:
        run_with_status(
            quantizer_argv(self.source.target, partial, self.quant, self.imatrix.target if self.imatrix else None),
            self.source.log_path,
            f"llama.cpp quantize {self.quant}",
            f"quantize {self.quant}",
            writes_to=partial.parent,
            cwd=ToolFolder(partial.parent).cwd,  # where quantizer_argv names llama-quantize's files from
        )

    def verify(self, partial: Path) -> str:
        return f"{verify_gguf(partial, ftype_of(self.quant))} tensors, {mib(partial)}"


def quantizer_argv(source: Path, target: Path, quant: str, imatrix: Path | None = None) -> list[str]:
    """The quantizer child: llama.cpp's llama-quantize with an importance matrix, else the library inside
    llama-cpp-python (nothing to build). llama-quantize runs in the target's folder (ToolFolder)."""
    if imatrix is None:
        return [sys.executable, "-m", "wrapper.gguf.quantize", str(source), str(target), str(ftype_of(quant))]
    at = ToolFolder(target.parent)
    argv = [str(tool("llama-quantize")), "--imatrix", at.arg(imatrix), "--max-buffer-size", str(MAX_BUF_BYTES // 2**20)]
    return argv + [at.arg(source), at.arg(target), quant, str(cpu_jobs())]


def check_quant_names(quants: list[str], imatrix: bool = False) -> list[str]:
    normalised = [q.upper() for q in quants]
    for quant in normalised:
        if quant not in QUANT_TYPES:
            raise FtwError(f"--quant {quant}: unknown type. Choose from {', '.join(QUANT_TYPES)}.")
        if quant in NEEDS_IMATRIX and not imatrix:
            raise FtwError(f"--quant {quant} needs an importance matrix (llama.cpp refuses it without): add --imatrix")
    return normalised


def check_gguf_disk(merged: Path, gguf_dir: Path, outtype: str, quants: list[str]) -> None:
    """Stop before converting when the unquantized GGUF and the `quants` still to be made don't fit the free disk."""
    _, params = model_weights(merged)
    if params:
        needs = {f"{outtype} GGUF": params * 2}
        needs.update({f"{quant} GGUF": int(params * QUANT_BITS[quant] / 8) for quant in quants})
        check_free_space(gguf_dir, needs, "ftw gguf")


def check_weights_suit(merged: Path, outtype: str, run: str) -> None:
    """A bf16 GGUF made from weights ftw export stored as float16 would lose what bf16 holds and f16 doesn't."""
    if outtype != "bf16":
        return
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    if (config.get("dtype") or config.get("torch_dtype")) != "bfloat16":
        return
    if any(
        info.dtype == "F16"
        for path in merged_weight_files(merged)
        if path.suffix == ".safetensors"
        for info in read_header(path).values()
    ):
        raise FtwError(
            f"{merged} holds the weights as float16 (made for an f16 GGUF); for a bf16 GGUF, merge "
            f"them in the base's dtype first: ftw export --run {run} --weights-dtype base"
        )


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
        freed[artifacts.MERGED] = sum(path.stat().st_size for path in weights)
        manifest.record_removed(
            run_dir, artifacts.MERGED, {"weights": [path.name for path in weights], "bytes": freed[artifacts.MERGED]}
        )
        write_text_exact(
            merged / WEIGHTS_REMOVED_NOTE,
            "The merged weights were removed by `ftw gguf` once the quantized GGUF was verified, to free disk.\n"
            f"Make them again with: ftw export --run {run_dir.name} --force  (and keep them next time with\n"
            "ftw gguf --keep-intermediates). Config and tokenizer files stay here for the later stages.\n",
        )
        for path in weights:
            path.unlink()
    if full.is_file():
        key = artifacts.gguf(outtype)
        freed[key] = full.stat().st_size
        manifest.record_removed(run_dir, key, {"file": str(full), "bytes": freed[key]})
        full.unlink()
    if freed:
        done(
            f"removed the intermediates ({', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in freed.items())}); "
            "--keep-intermediates keeps them (ftw eval needs them)"
        )


def make_ggufs(
    run_dir: Path,
    quants: list[str],
    outtype: str = "f16",
    force: bool = False,
    keep_intermediates: bool = False,
    imatrix_tokens: int | None = None,
) -> dict[str, Path]:
    """The unquantized GGUF when a quantized file needs it, the importance matrix when asked for
    (`imatrix_tokens`: its calibration cap), then each quantized file; each only if not up to date."""
    quants = check_quant_names(quants, imatrix_tokens is not None)
    if outtype not in OUTTYPES:
        raise FtwError(f"--outtype {outtype}: choose {' or '.join(OUTTYPES)}")
    plan = manifest.plan_of(run_dir)
    merged = manifest.artifact(run_dir, artifacts.MERGED)
    (run_dir / "gguf").mkdir(exist_ok=True)
    full = ConvertStage(run_dir, plan, merged, outtype)
    full_inputs = full.inputs()
    imatrix = None
    if imatrix_tokens is not None and quants:
        tool("llama-imatrix")  # built (or refused) now, before anything long starts
        fmt = training_format(merged, plan.template, plan.system)
        calib = calibration(run_dir, plan, fmt, imatrix_tokens)
        imatrix = ImatrixStage(run_dir, plan, full.target, full_inputs.digest, calib, full.log_path)
    quantized = [QuantizeStage(run_dir, plan, full, full_inputs, quant, imatrix) for quant in quants]
    full.quants_to_make = [q.quant for q in quantized if stage.check(q, q.inputs(), force) is not None]
    # The unquantized GGUF is an intermediate: made when a quantized file (or the importance matrix) is made
    # from it, then removed with the merged weights, unless kept. Once removed it comes back only with them.
    thinned = manifest.removed_intermediates(run_dir)
    keep_full = not quants or (keep_intermediates and full.key not in thinned and artifacts.MERGED not in thinned)

    def remove() -> None:
        remove_intermediates(run_dir, merged, full.target, outtype, {q.quant: q.target for q in quantized})

    steps = [stage.Step(full, wanted=keep_full, remove=None if keep_intermediates or not quants else remove)]
    if imatrix:
        steps.append(stage.Step(imatrix, needs=(full,)))
    needs = (full, imatrix) if imatrix else (full,)
    steps += [stage.Step(q, needs=needs) for q in quantized]
    made = stage.run_steps(steps, force)
    return made
