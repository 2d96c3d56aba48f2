"""LLaMA-Factory's side of a run: its argument dataclasses, its own parser, its chat templates.

Rendered arguments are checked with LLaMA-Factory's own parser, in-process.

LLaMA-Factory rejects unknown keys but accepts a wrong type (`lora_rank: "abc"` parses),
and some of its checks are about the machine rather than the config (`bf16` without a
GPU). So three passes: unknown keys (with a did-you-mean), value types against the
argument dataclasses' annotations, then LLaMA-Factory's full check where the profile's
device is the one we are on.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import tempfile
import types
import typing
from typing import Any, Literal

from wrapper.config.schema import scalar_ok
from wrapper.core.errors import FtwError


def train_classes():
    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    return [ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GeneratingArguments]


def export_classes():
    from llamafactory.hparams import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments

    return [ModelArguments, DataArguments, FinetuningArguments, GeneratingArguments]


def field_index(classes) -> dict[str, tuple[str, Any]]:
    """key -> (owning dataclass name, annotated type) for every argument LLaMA-Factory knows."""
    index: dict[str, tuple[str, Any]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if item.init:
                index.setdefault(item.name, (cls.__name__, hints.get(item.name, item.type)))
    return index


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple, set):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is type(None):
        return value is None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return value in {member.value for member in annotation} or isinstance(value, annotation)
    if annotation in (bool, int, float):
        return scalar_ok(annotation, value)
    if annotation is str:
        # HfArgumentParser fields typed str also take numbers written bare in YAML
        # (e.g. `lora_target: all` is str, `report_to: none` too), so only refuse containers.
        return not isinstance(value, (dict, list))
    if isinstance(annotation, type):
        return isinstance(value, (annotation, str, dict))
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation) if a is not type(None))
    return getattr(annotation, "__name__", str(annotation))


def check_keys_and_types(args: dict[str, Any], origins: dict[str, str], classes) -> None:
    index = field_index(classes)
    for key, value in args.items():
        where = origins.get(key, key)
        if key not in index:
            close = difflib.get_close_matches(key, list(index), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise FtwError(f"{where}: LLaMA-Factory has no argument '{key}'.{hint}")
        owner, annotation = index[key]
        if value is not None and not _matches(value, annotation):
            raise FtwError(
                f"{where}: '{key}' must be {_describe(annotation)} ({owner}), found {type(value).__name__} {value!r}"
            )


def _rejection(yaml_name: str, exc: Exception, origins: dict[str, str]) -> FtwError:
    message = str(exc)
    # LLaMA-Factory's messages name the argument in backticks; point at where we set it.
    named = [origin for key, origin in origins.items() if f"`{key}`" in message or f"'{key}'" in message]
    hint = "".join(f"\n  set at {origin}" for origin in named)
    return FtwError(f"LLaMA-Factory rejects {yaml_name}: {message}{hint}")


# What a machine without the profile's GPU can't check: transformers refuses bf16/fp16 there.
MACHINE_DEPENDENT_KEYS = ("bf16", "fp16")
# Keys that need the process group torchrun starts: with one set, transformers looks for that group
# while parsing and fails outside the launch. Their types are checked above; the parse leaves them out.
LAUNCH_KEYS = ("ddp_backend",)


def _in_process(args: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """What can be parsed in this process: no launch-only keys, and an empty output_dir, so that the
    check (it looks there for checkpoints to resume) never depends on, or touches, what a run has."""
    return {key: value for key, value in args.items() if key not in LAUNCH_KEYS} | {"output_dir": output_dir}


def check_train_args(args: dict[str, Any], origins: dict[str, str], yaml_name: str, full_check: bool) -> list[str]:
    """Check the arguments; return the checks that were skipped because this isn't the target machine."""
    from llamafactory.hparams import get_train_args
    from llamafactory.hparams.parser import _parse_train_args

    check_keys_and_types(args, origins, train_classes())
    try:
        with tempfile.TemporaryDirectory(prefix="ftw-check-") as output_dir:
            if full_check:
                get_train_args(_in_process(args, output_dir))
                return []
            # Without the GPU: parse into LLaMA-Factory's argument dataclasses (their own
            # validation runs), with the precision flags off, and skip its machine checks.
            parse_only = {**_in_process(args, output_dir), **{key: False for key in MACHINE_DEPENDENT_KEYS}}
            _parse_train_args(parse_only)
    except (ValueError, ImportError, RuntimeError) as exc:
        raise _rejection(yaml_name, exc, origins) from exc
    return [
        "LLaMA-Factory's machine checks (get_train_args: devices, distributed launch, installed kernels)",
        f"{'/'.join(MACHINE_DEPENDENT_KEYS)} support of this machine",
    ]


def check_export_args(args: dict[str, Any], origins: dict[str, str], yaml_name: str) -> None:
    from llamafactory.hparams import get_infer_args

    check_keys_and_types(args, origins, export_classes())
    try:
        get_infer_args(dict(args))
    except (ValueError, ImportError, RuntimeError) as exc:
        raise _rejection(yaml_name, exc, origins) from exc


def known_templates() -> list[str]:
    from llamafactory.data.template import TEMPLATES

    return sorted(TEMPLATES)
