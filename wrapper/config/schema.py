"""What a recipe and a profile may hold: one typed dataclass per section.

Each field is the schema (its key and annotated type), the default and the help text
(`key(...)`), in one place. `parse(cls, mapping, doc)` reads a YAML section into the
dataclass and checks every key (unknown keys with a did-you-mean, types, required keys,
choices) with the file and line of the offending value; a section's own cross-field rules
live in its `check` method. `reference(cls)` lists the keys for the docs
(docs/reference.md is generated from it: `python -m wrapper.config.schema`).

The `train:` and `export:` sections are free: any LLaMA-Factory argument, checked
against LLaMA-Factory's own argument dataclasses at render (wrapper/config/llamafactory.py).
Their defaults, ftw's choices where neither recipe nor profile speaks, are here too.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.config.ollama import check_parameters
from wrapper.config.yamldoc import YamlDoc, did_you_mean
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_exact
from wrapper.core.paths import PROJECT_ROOT, display_path

METHODS = ("lora", "qlora", "full")
DEDUPE_MODES = ("exact", "near", "none")
DEVICES = ("cpu", "cuda")
# How a base is computed when it trains on a CPU (wrapper/config/compute_dtype.py).
CPU_DTYPES = ("auto", "float32", "bfloat16")
SYNTH_KINDS = ("facts", "qa", "cot")

DEFAULT_ORIGIN = "ftw default (wrapper/config/schema.py)"
# LLaMA-Factory training keys where neither recipe nor profile speaks. Hyperparameters follow
# LLaMA-Factory's own examples (examples/train_lora/*_lora_sft.yaml).
TRAIN_DEFAULTS: dict[str, Any] = {
    "trust_remote_code": True,
    "stage": "sft",
    "do_train": True,
    "lora_rank": 8,
    "lora_target": "all",
    "cutoff_len": 2048,
    "overwrite_cache": True,
    "preprocessing_num_workers": 1,
    "logging_steps": 10,
    "save_steps": 500,
    "save_total_limit": 3,
    "plot_loss": True,
    "overwrite_output_dir": False,
    "save_only_model": False,
    "report_to": "tensorboard",  # the curves in TensorBoard, on this machine (ftw board)
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "learning_rate": 1.0e-4,
    "num_train_epochs": 3.0,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,  # a float below 1 is a ratio of all steps (transformers 5)
}
EXPORT_DEFAULTS: dict[str, Any] = {
    "trust_remote_code": True,
    "export_size": 5,
    "export_device": "cpu",
    "export_legacy_format": False,
}
# Keys ftw sets from the recipe's structure; setting them under `train:` would be ambiguous.
OWNED_TRAIN_KEYS = {
    "model_name_or_path": "model.base",
    "adapter_name_or_path": "model.base",
    "template": "model.template",
    "dataset": "dataset",
    "dataset_dir": "dataset",
    "output_dir": "the run directory (--run)",
    "finetuning_type": "method",
    "quantization_bit": "method (qlora)",
    "default_system": "system",
}
OWNED_EXPORT_KEYS = ("model_name_or_path", "adapter_name_or_path", "export_dir", "template", "finetuning_type")
# Tokens would end up in train.yaml, the manifest and logs; LLaMA-Factory and huggingface_hub
# read them from the environment (HF_TOKEN) or the login cache instead.
SECRET_KEYS = ("hf_hub_token", "ms_hub_token", "om_hub_token")


def key(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Any = dataclasses.MISSING,
    required: bool = False,
    choices: tuple = (),
) -> Any:
    """A field of a schema dataclass: its default, help text, and whether it is required or limited to choices."""
    metadata = {"help": help, "required": required, "choices": choices}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    if required and default is dataclasses.MISSING:
        default = None
    return field(default=default, metadata=metadata)


def internal(default: Any = None) -> Any:
    """A field that is not a key of the file (filled by the loader)."""
    return field(default=default, metadata={"yaml": False}, repr=False, compare=False)


# ---- recipe sections --------------------------------------------------------------------


@dataclass
class ModelSection:
    base: str = key(
        required=True, help="Hugging Face hub id (Qwen/Qwen3-8B) or a local model folder, relative to the recipe file"
    )
    template: str = key(
        required=True, help="LLaMA-Factory chat template the model is trained with (qwen3_nothink, llama3, ...)"
    )
    full_precision_base: str | None = key(
        None, help="for a pre-quantized (bitsandbytes) base: the full-precision model the LoRA is merged into"
    )
    cpu_dtype: str = key(
        "auto",
        choices=CPU_DTYPES,
        help="training on a CPU: the dtype the base's weights are loaded and computed in; auto: float32 "
        "unless the CPU has fast bfloat16 (avx512_bf16 or amx_bf16)",
    )


@dataclass
class FieldMap:
    """Columns of an application chat log (data.field_map): which holds what."""

    instruction: str | None = key(None, help="column with the user's message (required in a field_map)")
    input: str | None = key(None, help="column appended to the instruction on a new line")
    output: str | None = key(None, help="column with the answer (required in a field_map)")
    system: str | None = key(None, help="column with a per-row system prompt")
    rating: str | None = key(None, help="column with a numeric rating (for data.min_rating)")
    lang: str | None = key(None, help="column with the row's language code")

    def as_dict(self) -> dict[str, str]:
        return {name: value for name, value in dataclasses.asdict(self).items() if value}


@dataclass
class DataSettings:
    """`ftw data prepare`: how the user's files become the training set."""

    val_ratio: float = key(0.1, help="share of rows held out for validation, per language")
    seed: int = key(42, help="seed of the train/validation split")
    dedupe: str = key(
        "exact",
        choices=DEDUPE_MODES,
        help="drop exact duplicates, near ones too (same after case/whitespace folding), or none",
    )
    min_rating: float | None = key(None, help="drop chat-log rows rated below this (needs field_map.rating)")
    field_map: FieldMap = key(factory=FieldMap, help="chat-log columns -> roles; rows then need no known format")
    chunk_overlap: int = key(0, help="raw text: tokens shared by consecutive chunks")
    probes_per_fact: int = key(
        2, help="rows carrying `fact`: phrasings of each fact held out as probes (data/probes.jsonl), never trained"
    )
    unseen_share: float = key(
        0.1, help="rows carrying `fact`: share of the chunks held out whole (data/unseen.jsonl), never trained"
    )
    replay: str | None = key(
        None,
        help="a file of general rows (Alpaca, ShareGPT, messages), relative to the recipe, mixed into "
        "train.jsonl against forgetting",
    )
    replay_share: float = key(0.1, help="with replay: share of train.jsonl's rows drawn from the replay file")

    def check(self, doc: YamlDoc, prefix: str) -> None:
        if self.probes_per_fact < 0:
            raise FtwError(
                f"{doc.origin(prefix + 'probes_per_fact')}: probes_per_fact is a number of rows per fact, >= 0 "
                "(0: no probes)"
            )
        if not 0 <= self.unseen_share < 1:
            raise FtwError(
                f"{doc.origin(prefix + 'unseen_share')}: unseen_share is a share of the chunks, "
                f"0 <= unseen_share < 1; found {self.unseen_share!r}"
            )
        if not 0 < self.replay_share < 1:
            raise FtwError(
                f"{doc.origin(prefix + 'replay_share')}: replay_share is the share of train.jsonl's rows drawn "
                f"from data.replay, 0 < replay_share < 1; found {self.replay_share!r}"
            )
        if self.replay is not None and not self.replay.strip():
            raise FtwError(
                f"{doc.origin(prefix + 'replay')}: replay is a file of general rows; give its path or remove the key"
            )
        if not 0 <= self.val_ratio < 1:
            raise FtwError(
                f"{doc.origin(prefix + 'val_ratio')}: val_ratio is a share of the rows, "
                f"0 <= val_ratio < 1; found {self.val_ratio!r}"
            )
        if self.chunk_overlap < 0:
            raise FtwError(f"{doc.origin(prefix + 'chunk_overlap')}: chunk_overlap is a number of tokens >= 0")
        mapped = self.field_map.as_dict()
        if mapped and not (mapped.get("instruction") and mapped.get("output")):
            raise FtwError(
                f"{doc.origin(prefix + 'field_map')}: field_map needs at least 'instruction' and 'output' "
                "(the columns holding the user's message and the answer)"
            )
        if self.min_rating is not None and not mapped.get("rating"):
            raise FtwError(
                f"{doc.origin(prefix + 'min_rating')}: min_rating needs field_map.rating "
                "(the column holding each row's rating)"
            )


@dataclass
class OllamaSection:
    parameters: dict[str, Any] = key(
        factory=dict,
        help="Ollama PARAMETER values (temperature, num_ctx, stop, ...), checked against Ollama's names and types",
    )

    def check(self, doc: YamlDoc, prefix: str) -> None:
        check_parameters(self.parameters, lambda name: doc.origin(f"{prefix}parameters.{name}"))


@dataclass
class EvalSettings:
    """`ftw eval`: the prompt sets and how many validation rows are answered."""

    control: str | None = key(None, help="JSONL of control prompts with reference answers, relative to the recipe")
    general: str | None = key(
        None, help="JSONL of general-knowledge prompts with the fact each answer must contain (the forgetting check)"
    )
    val_sample: int = key(30, help="validation rows to answer")
    seed: int = key(42, help="seed of the validation sample")
    max_new_tokens: int = key(64, help="longest greedy answer")


@dataclass
class SynthSettings:
    """`ftw data synth`: how documents become question-answer rows (docs/data.md)."""

    docs: list[str] = key(factory=list, help="documents or folders, relative to the recipe; `--docs` replaces them")
    kind: str = key(
        "facts",
        choices=SYNTH_KINDS,
        help="facts: each fact of a chunk in varied questions, plus rewrites; qa: question + answer; "
        "cot: question + reasoning + answer",
    )
    per_chunk: int = key(3, help="qa, cot: rows asked of the teacher per chunk")
    phrasings: int = key(8, help="facts: questions asked per fact, of varied forms")
    rewrites: int = key(2, help="facts: rewrites of each chunk, trained as its document rows (0: none)")
    chunk_tokens: int = key(512, help="tokens of document text per chunk (the recipe's tokenizer)")
    chunk_overlap: int = key(64, help="tokens shared by consecutive chunks")
    answer_language: str | None = key(
        None, help="language code every answer is written in; default: the chunk's own language"
    )
    templates: str | None = key(
        None, help="folder with your own prompt templates ({lang}/{kind}.j2, judge.j2), relative to the recipe"
    )
    temperature: float = key(0.0, help="teacher sampling temperature (0: greedy, reproducible)")
    seed: int = key(42, help="teacher sampling seed")
    max_tokens: int = key(1024, help="longest teacher reply, in tokens")
    min_answer_chars: int = key(20, help="shorter answers are rejected (too_short)")
    max_answer_chars: int = key(4000, help="longer answers are rejected (too_long)")
    min_grounding: float = key(
        0.6, help="share of the answer's content words that must occur in the chunk (numbers and names: all)"
    )
    judge: bool = key(False, help="the teacher also scores each pair 1-5 (one more request per row)")
    min_score: int = key(3, help="with judge: rows scored below this are rejected (low_score)")

    def check(self, doc: YamlDoc, prefix: str) -> None:
        rules = (
            ("per_chunk", 1 <= self.per_chunk <= 20, "a number of rows per chunk, 1..20"),
            ("phrasings", 1 <= self.phrasings <= 20, "a number of questions per fact, 1..20"),
            ("rewrites", 0 <= self.rewrites <= 10, "a number of rewrites per chunk, 0..10"),
            ("chunk_tokens", self.chunk_tokens >= 64, "a number of tokens >= 64"),
            ("chunk_overlap", 0 <= self.chunk_overlap * 2 < self.chunk_tokens, "tokens >= 0, under half a chunk"),
            ("temperature", 0 <= self.temperature <= 2, "between 0 and 2"),
            ("max_tokens", self.max_tokens >= 16, "a number of tokens >= 16"),
            ("min_grounding", 0 <= self.min_grounding <= 1, "a share between 0 and 1"),
            ("min_score", 1 <= self.min_score <= 5, "a score between 1 and 5"),
        )
        for name, ok, rule in rules:
            if not ok:
                raise FtwError(f"{doc.origin(prefix + name)}: {name} must be {rule}; found {getattr(self, name)!r}")


@dataclass
class Check:
    prompt: str = key(required=True, help="a question for the fine-tuned model")
    expect: str = key(required=True, help="text its answer must contain")


@dataclass
class Recipe:
    """A recipe (recipes/*.yaml): what to train, on what, and how to serve it."""

    model: ModelSection = key(required=True, help="the base model and its chat template")
    dataset: list[str] = key(
        factory=list,
        help="data files (Alpaca, ShareGPT, OpenAI messages), relative to the recipe; `--data` replaces them; "
        "none: the run's `ftw data synth` rows",
    )
    method: str = key("lora", choices=METHODS, help="lora, qlora (4-bit NF4 base) or full")
    description: str = key("", help="one line about the recipe")
    system: str | None = key(None, help="system prompt for training and serving; else the template's default")
    train: dict[str, Any] = key(
        factory=dict, help="any LLaMA-Factory training key (learning_rate, cutoff_len, ...), checked against its parser"
    )
    export: dict[str, Any] = key(factory=dict, help="any LLaMA-Factory export key")
    ollama: OllamaSection = key(factory=OllamaSection, help="serving settings for the Modelfile")
    checks: list[Check] = key(factory=list, help="prompts the quantized GGUF must answer (`ftw smoke`)")
    data: DataSettings = key(factory=DataSettings, help="how `ftw data prepare` builds the training set")
    eval: EvalSettings = key(factory=EvalSettings, help="`ftw eval`'s prompt sets")
    synth: SynthSettings = key(factory=SynthSettings, help="how `ftw data synth` turns documents into rows")
    name: str = internal("")
    doc: YamlDoc | None = internal()

    @property
    def folder(self) -> Path:
        return self.yaml.path.parent

    @property
    def yaml(self) -> YamlDoc:
        """The YAML document it was read from (every loaded recipe has one)."""
        if self.doc is None:
            raise ValueError("this recipe was not read from a file")
        return self.doc

    def origin(self, key: str):
        """Where `key` came from (file:line, or a --set), for messages."""
        return self.yaml.origin(key)


# ---- profile sections -------------------------------------------------------------------


@dataclass
class GpuSection:
    compute_capability: float = key(0.0, help="CUDA compute capability (8.9 for Ada); FlashAttention-2 needs 8.0+")
    bf16: bool = key(True, help="the card computes in bf16")
    peak_bf16_tflops: float = key(0.0, help="dense bf16 peak (vendor figure), for the epoch-time estimate")


@dataclass
class Profile:
    """A profile (recipes/profiles/*.yaml): a card's memory class and the training keys it sets."""

    device: str = key("cuda", choices=DEVICES, help="cuda or cpu")
    memory_gb: float = key(0.0, help="memory of one card in GiB; 0: no memory plan (the generic cuda profile)")
    description: str = key("", help="one line about the card")
    train: dict[str, Any] = key(factory=dict, help="LLaMA-Factory training keys for this card (bf16, optim, ...)")
    aliases: list[str] = key(factory=list, help="other names of cards in the same class")
    gpu: GpuSection = key(factory=GpuSection, help="what the planner needs to know of the card")
    name: str = internal("")
    doc: YamlDoc | None = internal()
    gpus: int = internal(1)  # NAMExN: N GPUs of this profile (cpuxN: N processes on the CPU)

    @property
    def base_name(self) -> str:
        return self.name.rsplit("x", 1)[0] if self.gpus > 1 else self.name


# ---- reading a section ------------------------------------------------------------------


def yaml_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}


def keys_of(cls) -> tuple[str, ...]:
    """The keys a section may hold."""
    return tuple(yaml_fields(cls))


def _optional(annotation: Any) -> Any:
    """X for `X | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def type_name(annotation: Any) -> str:
    annotation = _optional(annotation)
    if dataclasses.is_dataclass(annotation) or typing.get_origin(annotation) is dict or annotation is dict:
        return "dict"
    if typing.get_origin(annotation) is list:
        return "list"
    return {float: "int or float"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def scalar_ok(annotation: Any, value: Any) -> bool:
    """isinstance, except that a bool is no number and an int is a float (as YAML writes them)."""
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _wrong_type(doc: YamlDoc, dotted: str, expected: str, value: Any) -> FtwError:
    return FtwError(f"{doc.origin(dotted)}: expected {expected}, found {type(value).__name__} {value!r}")


def _value(annotation: Any, value: Any, doc: YamlDoc, dotted: str) -> Any:
    """`value` checked against `annotation` (nested sections parsed), or an error naming file, line and key."""
    annotation = _optional(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise _wrong_type(doc, dotted, "dict", value)
        return parse(annotation, value, doc, dotted + ".")
    origin = typing.get_origin(annotation)
    if origin is list or annotation is list:
        if not isinstance(value, list):
            raise _wrong_type(doc, dotted, "list", value)
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [
            value_ if item_type is Any else _value(item_type, value_, doc, f"{dotted}[{index}]")
            for index, value_ in enumerate(value)
        ]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _wrong_type(doc, dotted, "dict", value)
        return dict(value)
    if not scalar_ok(annotation, value):
        raise _wrong_type(doc, dotted, type_name(annotation), value)
    return float(value) if annotation is float else value


def parse(cls, mapping: dict, doc: YamlDoc, prefix: str = ""):
    """The schema dataclass `cls` read from `mapping` (a YAML section whose keys start with `prefix`)."""
    fields = yaml_fields(cls)
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    for name in mapping:
        if name not in fields:
            raise FtwError(
                f"{doc.origin(f'{prefix}{name}')}: unknown key.{did_you_mean(str(name), fields)} "
                f"Known keys here: {', '.join(sorted(fields))}."
            )
    values = {}
    for name, spec in fields.items():
        dotted = f"{prefix}{name}"
        value = mapping.get(name)
        if spec.metadata["required"] and value in (None, "", []):
            parent = prefix.rstrip(".") or dotted
            raise FtwError(f"{doc.origin(parent)}: '{dotted}' is required in {display_path(doc.path)}")
        if value is None:
            continue
        values[name] = _value(hints[name], value, doc, dotted)
        choices = spec.metadata["choices"]
        if choices and values[name] not in choices:
            raise FtwError(f"{doc.origin(dotted)}: {name} must be one of {', '.join(choices)}, found {value!r}")
    section = cls(**values)
    if hasattr(section, "check"):
        section.check(doc, prefix)
    return section


# ---- the reference --------------------------------------------------------------------


def reference(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) of every key of a section and its subsections."""
    rows = []
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    for name, spec in yaml_fields(cls).items():
        dotted = f"{prefix}{name}"
        annotation = _optional(hints[name])
        item = (typing.get_args(annotation) or (None,))[0] if typing.get_origin(annotation) is list else None
        if dataclasses.is_dataclass(annotation):
            kind, default = "section", ""
        else:
            kind = " \\| ".join(spec.metadata["choices"]) or type_name(annotation)
            if item is not None:
                kind = f"list of {'entries' if dataclasses.is_dataclass(item) else type_name(item)}"
            default = _default_text(spec)
        rows.append((dotted, kind, default, spec.metadata["help"]))
        if dataclasses.is_dataclass(annotation):
            rows += reference(annotation, dotted + ".")
        elif dataclasses.is_dataclass(item):
            rows += reference(item, dotted + "[].")
    return rows


def _default_text(spec: dataclasses.Field) -> str:
    if spec.metadata["required"]:
        return "**required**"
    value = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    if value is None:
        return "not set"
    return f"`{value}`" if value not in ("", [], {}) else "empty"


def reference_markdown() -> str:
    """The key tables of docs/reference.md."""
    parts = []
    for title, cls in (("Recipe keys", Recipe), ("Profile keys", Profile)):
        lines = [f"### {title}", "", "| key | type | default | what it is |", "|---|---|---|---|"]
        lines += [f"| `{name}` | {kind} | {default} | {text} |" for name, kind, default, text in reference(cls)]
        parts.append("\n".join(lines))
    for title, defaults in (
        ("`train:` defaults (where neither recipe nor profile sets the key)", TRAIN_DEFAULTS),
        ("`export:` defaults", EXPORT_DEFAULTS),
    ):
        lines = [f"### {title}", "", "| LLaMA-Factory key | ftw's default |", "|---|---|"]
        lines += [f"| `{name}` | `{value}` |" for name, value in defaults.items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


REFERENCE_START = "<!-- keys: generated by `python -m wrapper.config.schema`; do not edit by hand -->"
REFERENCE_END = "<!-- end of generated keys -->"


def with_reference(page: str) -> str:
    """`page` (docs/reference.md) with the generated key tables between its two markers."""
    head, start, rest = page.partition(REFERENCE_START)
    _, end, tail = rest.partition(REFERENCE_END)
    if not (start and end):
        raise ValueError(f"the page has no {REFERENCE_START} ... {REFERENCE_END} block")
    return f"{head}{start}\n\n{reference_markdown()}\n{end}{tail}"


if __name__ == "__main__":
    # Rewrites the key tables of docs/reference.md from the dataclasses above.
    page = PROJECT_ROOT / "docs" / "reference.md"
    write_text_exact(page, with_reference(page.read_text(encoding="utf-8")))
    print(f"updated the key tables in {page}")
