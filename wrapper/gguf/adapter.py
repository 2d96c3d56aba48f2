"""`ftw adapter`: the run's LoRA as a small GGUF adapter that llama.cpp and Ollama
apply to a base model when they load it, instead of a merged copy of the whole model.

Stages of the contract (wrapper/core/stage.py), all in runs/RUN/gguf/ and logged in logs/gguf.log:

- RUN-lora.gguf (`gguf_lora`): llama.cpp's convert_lora_to_gguf.py on the adapter. It needs only
  the base's config.json, given without its quantization_config: the converter reads no base
  weights but refuses a bitsandbytes config, and a QLoRA's base is one.
- RUN-base-Q4_K_M.gguf (`gguf_base_q4_k_m`), when no --base is given: the run's base model converted
  and quantized as the merged model is, with the training format as its chat template, so that
  `ftw adapter` alone gives a pair to serve and `ftw eval` a base to score.
- RUN-vocab.gguf (`gguf_vocab`): what the converter makes of the base's header and vocabulary, no
  weights (seconds). Made only to check a given base when the run has no GGUF of its own yet.

A base given with --base (a local GGUF, or an Ollama name found in the local store) is checked
against the run's base before the adapter is written: llama.cpp's architecture, the layer count,
the width and the vocabulary token by token. An adapter applied to another model loads and
answers wrongly, so a mismatch is refused. An Ollama name missing from the local store can't be
checked here: the Modelfile still names it, and the message says how to check it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from wrapper.config.models import local_model_dir
from wrapper.core import artifacts, manifest, stage
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_exact
from wrapper.core.gguf_io import (
    DEFAULT_QUANT,
    QUANT_TYPES,
    GgufShape,
    field_value,
    ftype_of,
    read_gguf,
    verify_gguf,
)
from wrapper.core.ollama_store import ollama_blob, ollama_manifest, ollama_models_dir
from wrapper.core.paths import llama_cpp_commit, modelfile_path
from wrapper.core.plan import ADAPTER_FILES, RunPlan
from wrapper.core.procs import run_with_status
from wrapper.core.ui import done, step
from wrapper.gguf.convert import GGUF_PY_ENV, convert_in_training_format, llama_cpp_script, run_converter
from wrapper.gguf.stage import check_gguf_disk, quantizer_argv

OUTTYPES = ("f16", "bf16", "q8_0")


def size_text(path: Path) -> str:
    size = path.stat().st_size / 2**20
    return f"{size:.1f} MiB" if size < 100 else f"{size:,.0f} MiB"


# ---- the run's base, as folders and as llama.cpp sees it -----------------------------------------


def trained_on_dir(plan: RunPlan) -> Path:
    """The folder of the model the adapter was trained on; its config.json is what the converter needs."""
    for model in (plan.base_model, plan.merge_base):
        folder = local_model_dir(model)
        if folder is not None and (folder / "config.json").is_file():
            return folder
    raise FtwError(
        f"the run's base {plan.base_model} is not on this disk, and its config.json is needed to convert the "
        f"adapter. Fetch it: huggingface-cli download {plan.base_model} config.json; then: "
        f"ftw adapter --run {plan.run}"
    )


def full_precision_dir(plan: RunPlan) -> Path:
    """The base's full-precision weights, for the base GGUF ftw makes when no --base is given."""
    folder = local_model_dir(plan.merge_base)
    if folder is not None and (folder / "config.json").is_file():
        return folder
    if Path(plan.merge_base) == plan.dequantized_base_dir:
        raise FtwError(
            f"the run's base {plan.base_model} is a bitsandbytes 4-bit checkpoint, which llama.cpp can't read. "
            f"Give a GGUF of the original model: ftw adapter --run {plan.run} --base FILE.gguf (or an Ollama "
            f"name, such as qwen3:8b); or make the dequantized copy first (ftw export --run {plan.run} makes it), "
            f"then: ftw adapter --run {plan.run}"
        )
    raise FtwError(
        f"the run's base {plan.merge_base} is not on this disk. Give a GGUF of it: "
        f"ftw adapter --run {plan.run} --base FILE.gguf (or an Ollama name)"
    )


class VocabStage:
    """gguf/RUN-vocab.gguf: the header and vocabulary llama.cpp's converter makes of the run's base."""

    title = "vocabulary GGUF of the run's base"
    force_says = "makes it again"

    def __init__(self, run_dir: Path, plan: RunPlan, log_path: Path):
        self.run_dir, self.key = run_dir, artifacts.GGUF_VOCAB
        self.target = run_dir / "gguf" / f"{plan.run}-vocab.gguf"
        self.logs: dict[str, Path] = {}
        self.source, self.log_path = trained_on_dir(plan), log_path

    def inputs(self) -> stage.StageInputs:
        return stage.StageInputs(
            self.key, {"base model": stage.folder_digest(self.source), "llama.cpp": str(llama_cpp_commit())}
        )

    def make(self, partial: Path) -> None:
        run_converter(self.source, partial, "f16", self.log_path, vocab_only=True)

    def verify(self, partial: Path) -> str:
        shape = GgufShape.read(partial)
        if not shape.tokens:
            raise FtwError(f"{partial} holds no vocabulary")
        return f"{shape.architecture}, {len(shape.tokens)} tokens"


def reference_gguf(run_dir: Path, plan: RunPlan, log_path: Path) -> Path:
    """A GGUF of the run's own model to hold a given base against: one the run has (its base GGUF, or the
    merged model's, which keeps the base's shape and vocabulary), else a vocabulary-only conversion."""
    recorded = manifest.load(run_dir)["artifacts"]
    keys = [key for key in recorded if key.startswith(artifacts.BASE_GGUF_PREFIX)]
    keys += [artifacts.gguf(kind) for kind in ("f16", "bf16", *QUANT_TYPES)]
    for key in keys:
        if recorded.get(key) and Path(recorded[key]).is_file():
            return Path(recorded[key])
    return stage.run_atomic(VocabStage(run_dir, plan, log_path))


# ---- the base the adapter is served on -----------------------------------------------------------


@dataclass(frozen=True)
class AdapterBase:
    """The base model the adapter is applied to."""

    modelfile_from: str  # the Modelfile's FROM: a path relative to the run folder, or an Ollama name
    gguf: Path | None  # its GGUF here (ftw's, the user's, Ollama's blob); None: not on this machine
    label: str  # how messages name it
    checked: bool  # held against the run's base (or made from it)
    architecture: str | None = None  # llama.cpp's, when read


def looks_like_path(spec: str) -> bool:
    return Path(spec).expanduser().exists() or spec.endswith(".gguf") or spec.startswith(("/", ".", "~"))


def check_base(run_dir: Path, plan: RunPlan, gguf: Path, label: str, log_path: Path) -> GgufShape:
    """Refuse a base GGUF the run's adapter was not trained on (architecture, layers, width, vocabulary)."""
    given = GgufShape.read(gguf)
    again = f"ftw adapter --run {plan.run}"
    if given.file_type == "adapter":
        raise FtwError(
            f"{label} is a LoRA adapter, not a base model. Give the base model's GGUF, or leave --base out: {again}"
        )
    ours = GgufShape.read(reference_gguf(run_dir, plan, log_path))
    differences = ours.differences(given)
    if differences:
        raise FtwError(
            f"{label} is not the model this run's adapter was trained on ({plan.base_model}): "
            f"{'; '.join(differences)} (the run's base first). An adapter on another model loads and answers "
            f"wrongly. Give a GGUF of {plan.base_model} (--base FILE.gguf, or the Ollama name of that model), "
            f"or leave --base out and ftw makes one from the run's base: {again}"
        )
    if not given.tensors:
        raise FtwError(
            f"{label} holds no weights (a vocabulary-only GGUF). Give the model's GGUF, or leave --base out: {again}"
        )
    done(
        f"{label} matches the run's base: {given.architecture}, {given.block_count} layers, "
        f"width {given.embedding_length}, the same {len(given.tokens)} tokens"
    )
    return given


class BaseGgufStage:
    force_says = "makes it again"
    """gguf/RUN-base-QUANT.gguf: the run's base model as llama.cpp serves it, for the adapter to be applied to."""

    def __init__(self, run_dir: Path, plan: RunPlan, quant: str, log_path: Path):
        self.run_dir, self.key = run_dir, artifacts.base_gguf(quant)
        self.target = run_dir / "gguf" / f"{plan.run}-base-{quant}.gguf"
        self.logs: dict[str, Path] = {}
        self.plan, self.quant, self.log_path = plan, quant, log_path
        self.source = full_precision_dir(plan)
        self.title = f"base {quant} GGUF"

    def inputs(self) -> stage.StageInputs:
        return stage.StageInputs(
            self.key,
            {
                "base model": stage.folder_digest(self.source),
                "type": self.quant,
                "chat template": stage.value_digest([self.plan.template, self.plan.system]),
                "llama.cpp": str(llama_cpp_commit()),
            },
        )

    def make(self, partial: Path) -> None:
        plan = self.plan
        unquantized = partial.with_name(partial.name + ".f16")  # a helper of the partial: removed with it
        step(f"Converting the base model {self.source} with llama.cpp; full log: {self.log_path}")
        check_gguf_disk(self.source, partial.parent, "f16", [self.quant])
        convert_in_training_format(self.source, unquantized, "f16", plan, self.run_dir, self.log_path, self.key)
        run_with_status(
            quantizer_argv(unquantized, partial, self.quant),
            self.log_path,
            f"llama.cpp quantize {self.quant}",
            f"quantize base {self.quant}",
            writes_to=partial.parent,
        )
        unquantized.unlink()

    def verify(self, partial: Path) -> str:
        return f"{verify_gguf(partial, ftype_of(self.quant))} tensors, {size_text(partial)}"


def resolve_base(
    run_dir: Path, plan: RunPlan, spec: str | None, quant: str, log_path: Path, force: bool
) -> AdapterBase:
    """The base from --base (checked), or ftw's own GGUF of the run's base when none is given."""
    if spec is None:
        made = stage.run_atomic(BaseGgufStage(run_dir, plan, quant, log_path), force)
        return AdapterBase(
            modelfile_path(made.resolve(), run_dir.resolve()), made, f"the run's base as {quant} ({made.name})", True
        )
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FtwError(
                f"--base {spec}: no such file. Give a GGUF of {plan.base_model}, an Ollama name (qwen3:8b), or leave "
                f"--base out and ftw makes one: ftw adapter --run {plan.run}"
            )
        path = path.resolve()
        shape = check_base(run_dir, plan, path, str(path), log_path)
        return AdapterBase(modelfile_path(path, run_dir.resolve()), path, path.name, True, shape.architecture)
    name = spec.removeprefix("ollama:")
    if not ollama_manifest(name).is_file():
        step(
            f"[yellow]not checked[/yellow]: the Ollama model {name} is not in the local store here "
            f"({ollama_models_dir()}), so ftw could not check that it is {plan.base_model}, the model the adapter "
            f"was trained on (Ollama needs exactly that one). To check it: ollama pull {name}, then run again: "
            f"ftw adapter --run {plan.run} --base {name}",
        )
        return AdapterBase(name, None, f"Ollama's {name}", False)
    blob = ollama_blob(name)
    shape = check_base(run_dir, plan, blob, f"Ollama's {name} ({blob.name[:19]})", log_path)
    return AdapterBase(name, blob, f"Ollama's {name}", True, shape.architecture)


# ---- the adapter -------------------------------------------------------------------------------


class AdapterStage:
    force_says = "makes it again"
    """gguf/RUN-lora.gguf: the run's LoRA in llama.cpp's adapter format."""

    def __init__(self, run_dir: Path, plan: RunPlan, outtype: str, log_path: Path):
        self.run_dir, self.key = run_dir, artifacts.GGUF_LORA
        self.target = run_dir / "gguf" / f"{plan.run}-lora.gguf"
        self.plan, self.outtype, self.log_path = plan, outtype, log_path
        self.adapter = manifest.artifact(run_dir, artifacts.ADAPTER)
        self.trained_on = trained_on_dir(plan)
        self.title = f"LoRA adapter GGUF ({outtype})"
        self.architecture: str | None = None  # the base's, when known: the adapter must name the same

    def inputs(self) -> stage.StageInputs:
        return stage.StageInputs(
            self.key,
            {
                "adapter": stage.folder_digest(self.adapter, ADAPTER_FILES),
                "base config": stage.file_digest(self.trained_on / "config.json"),
                "outtype": self.outtype,
                "llama.cpp": str(llama_cpp_commit()),
            },
        )

    @property
    def logs(self) -> dict[str, Path]:
        return {artifacts.GGUF_LOG: self.log_path}

    def make(self, partial: Path) -> None:
        config_dir = partial.with_name(partial.name + ".base")  # a helper of the partial: removed with it
        config_dir.mkdir()
        config = json.loads((self.trained_on / "config.json").read_text(encoding="utf-8"))
        # The converter reads only the shapes, yet refuses a bitsandbytes config (a QLoRA's base).
        config.pop("quantization_config", None)
        write_text_exact(config_dir / "config.json", json.dumps(config, indent=2))
        step(f"Converting the adapter {self.adapter} with llama.cpp; full log: {self.log_path}")
        argv = [sys.executable, str(llama_cpp_script("convert_lora_to_gguf.py")), "--base", str(config_dir)]
        argv += ["--outtype", self.outtype, "--outfile", str(partial), str(self.adapter)]
        run_with_status(
            argv,
            self.log_path,
            "convert_lora_to_gguf",
            f"convert adapter {self.outtype}",
            env=GGUF_PY_ENV,
            writes_to=partial.parent,
        )

    def verify(self, partial: Path) -> str:
        reader, problem = read_gguf(partial)
        if problem is not None:
            raise FtwError(f"{partial} {problem}")
        kind, lora = field_value(reader, "general.type"), field_value(reader, "adapter.type")
        if kind != "adapter" or lora != "lora":
            raise FtwError(f"{partial}: general.type {kind!r}, adapter.type {lora!r}; expected a LoRA adapter")
        if not reader.tensors:
            raise FtwError(f"{partial} holds no tensors")
        arch = field_value(reader, "general.architecture")
        if self.architecture and arch != self.architecture:
            raise FtwError(f"{partial}: an adapter for {arch}, but the base is {self.architecture}")
        return f"{len(reader.tensors)} tensors for {arch}, {size_text(partial)}"


@dataclass(frozen=True)
class Adapter:
    """What `ftw adapter` made: the adapter GGUF, the base it is served on, and a GGUF with
    that base's tokenizer header (the base itself, or the run's own) for the Modelfile's checks."""

    lora: Path
    base: AdapterBase
    header_gguf: Path


def make_adapter(
    run_dir: Path, base_spec: str | None = None, quant: str = DEFAULT_QUANT, outtype: str = "f16", force: bool = False
) -> Adapter:
    """The base (checked, or made), then the adapter GGUF; each only if not up to date."""
    if outtype not in OUTTYPES:
        raise FtwError(f"--outtype {outtype}: choose from {', '.join(OUTTYPES)}")
    plan = manifest.plan_of(run_dir)
    log_path = run_dir / "logs" / "gguf.log"
    adapter = AdapterStage(run_dir, plan, outtype, log_path)  # no adapter or base config: said before any work
    (run_dir / "gguf").mkdir(exist_ok=True)
    base = resolve_base(run_dir, plan, base_spec, quant.upper(), log_path, force)
    adapter.architecture = base.architecture
    lora = stage.run_atomic(adapter, force)
    if base.gguf is not None:
        manifest.record_artifacts(run_dir, **{artifacts.GGUF_LORA_BASE: base.gguf})
    else:
        manifest.drop_artifact(run_dir, artifacts.GGUF_LORA_BASE)  # an Ollama name not here: nothing local to load
    header = base.gguf or reference_gguf(run_dir, plan, log_path)
    return Adapter(lora, base, header)
