"""Render stage: recipe + profile (+ the user's data and --set) -> a checked run directory.

Writes runs/RUN/train.yaml, export.yaml and dataset_info.json through the Jinja2
templates in templates/, checks both YAMLs with LLaMA-Factory's parser, and starts the
run's manifest with its RunPlan (wrapper/core/plan.py). Nothing long runs here; every
mistake is found before training.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from wrapper.config import compute_dtype, llamafactory, planner, processes
from wrapper.config.models import bnb_quantization, choose_merge_base, model_config, resolve_model
from wrapper.config.profiles import load_profile
from wrapper.config.recipes import load_recipe
from wrapper.config.schema import (
    DEFAULT_ORIGIN,
    EXPORT_DEFAULTS,
    OWNED_EXPORT_KEYS,
    OWNED_TRAIN_KEYS,
    SECRET_KEYS,
    TRAIN_DEFAULTS,
    Profile,
    Recipe,
)
from wrapper.core import manifest
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.paths import TEMPLATES_DIR, check_run_name, display_path, runs_dir
from wrapper.core.plan import RunPlan
from wrapper.core.platform import NO_LIGER, liger_available
from wrapper.core.templates import template_env
from wrapper.data.datasets import DatasetFile, inspect_dataset
from wrapper.data.prepared import PreparedData, load_prepared
from wrapper.train import base_dtype, stops

PLANNER_ORIGIN = "planner for profile {} (wrapper/config/planner.py)"


def tuned_args(recipe: Recipe, profile: Profile) -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults, then the recipe's train keys, then the profile's, then --set: later wins."""
    args = dict(TRAIN_DEFAULTS)
    origins = {key: DEFAULT_ORIGIN for key in args}
    layers = [
        ({k: v for k, v in recipe.train.items() if f"train.{k}" not in recipe.doc.overrides}, recipe.doc),
        (profile.train, profile.doc),
        ({k: v for k, v in recipe.train.items() if f"train.{k}" in recipe.doc.overrides}, recipe.doc),
    ]
    for values, doc in layers:
        for key, value in values.items():
            if key in OWNED_TRAIN_KEYS:
                raise FtwError(
                    f"{doc.origin(f'train.{key}')}: '{key}' is set by ftw from {OWNED_TRAIN_KEYS[key]}; remove it here"
                )
            if key in SECRET_KEYS:
                raise FtwError(
                    f"{doc.origin(f'train.{key}')}: a token doesn't belong in a recipe (it would be written "
                    "to train.yaml and the manifest). Remove it; export HF_TOKEN or run `huggingface-cli login`."
                )
            args[key] = value
            origins[key] = str(doc.origin(f"train.{key}"))
    if args.get("enable_liger_kernel") and not liger_available():
        args["enable_liger_kernel"] = False
        origins["enable_liger_kernel"] = NO_LIGER
    return args, origins


def _fit_to_profile(
    recipe: Recipe,
    profile: Profile,
    args: dict,
    origins: dict,
    base_model: str,
    quantization: str | None,
    run_dir: Path,
    ignore_fit: bool,
) -> dict:
    """Let the planner choose batch, accumulation, checkpointing, QLoRA and ZeRO for the card; refuse what won't fit."""
    shape = planner.ModelShape.from_config(model_config(base_model))
    pinned = {key.removeprefix("train.") for key in recipe.doc.overrides if key.startswith("train.")}
    method = "qlora" if quantization else recipe.method
    choice = planner.plan_for_profile(shape, args, method, profile, pinned)
    report = planner.summary(choice, profile)
    if not choice.fits and not ignore_fit:
        m = choice.memory
        raise FtwError(
            f"{recipe.name} does not fit profile {profile.name}: the leanest settings need ~{m.total:.2f} GiB "
            f"(weights {m.weights:.1f}, activations {m.activations:.1f}, logits {m.logits:.1f}, other "
            f"{m.trainable + m.gradients + m.optimizer + m.overhead:.1f}) of {report['budget_gb']:.2f} GiB "
            f"({planner.FIT_FRACTION:.0%} of {profile.memory_gb:g} GiB). {_shorter_cutoff_hint(shape, choice, profile)}"
            f"a smaller model, a bigger profile, or --ignore-fit to render anyway. "
            f"Details: ftw plan --recipe {recipe.name} --profile {profile.name} --max-context"
        )
    chosen = planner.args_for(choice, method)
    if "flash_attn" not in args:
        chosen["flash_attn"] = planner.attention_for(profile.gpu.compute_capability)
    ds_name = planner.deepspeed_config_name(choice.settings)
    if ds_name:
        chosen.update(deepspeed=str(run_dir / "ds_config.json"), ddp_timeout=180000000)
        report["deepspeed_template"] = ds_name
    for key, value in chosen.items():
        if key not in pinned:
            args[key] = value
            origins[key] = PLANNER_ORIGIN.format(profile.name)
    return report


def _shorter_cutoff_hint(shape: planner.ModelShape, choice: planner.Choice, profile: Profile) -> str:
    """The longest cutoff_len the leanest settings fit, as the first thing to try."""
    settings = choice.settings
    if settings.method == "full" or settings.zero_stage:
        return "Try a shorter cutoff_len (--set cutoff_len=1024), "
    longest = planner.longest_cutoff(shape, settings, planner.profile_facts(profile), True, settings.cutoff)
    if longest == 0:
        return "Even a cutoff_len of 1 doesn't fit (the weights alone are too big): try "
    return (
        f"The longest cutoff_len that fits is {longest}, with checkpoints offloaded to host RAM "
        f"(--set cutoff_len={longest}); or try "
    )


def _check_template(recipe: Recipe) -> None:
    templates = llamafactory.known_templates()
    if recipe.model.template not in templates:
        close = difflib.get_close_matches(recipe.model.template, templates, n=3)
        raise FtwError(
            f"{recipe.doc.origin('model.template')}: LLaMA-Factory has no chat template "
            f"'{recipe.model.template}'." + (f" Close: {', '.join(close)}." if close else "")
        )


def _datasets(
    recipe: Recipe, data_files: list[str], prepared: PreparedData | None
) -> tuple[list[str], list[DatasetFile]]:
    """(dataset_info names, files) the run trains on: prepared data, else --data, else the recipe's."""
    if prepared:
        return [name for name, _ in prepared.files], [dataset for _, dataset in prepared.files]
    if data_files:
        paths = [Path(p).expanduser().resolve() for p in data_files]
    elif recipe.dataset:
        paths = [(recipe.folder / p).resolve() for p in recipe.dataset]
    else:
        raise FtwError(
            f"{recipe.doc.path.name} lists no dataset: prepare the run's data first "
            f"(ftw data prepare --recipe {recipe.name} --run RUN), or give --data FILE"
        )
    datasets = [inspect_dataset(path, recipe.data.field_map.as_dict()) for path in paths]
    names = [f"ftw_{i}_{re.sub(r'[^A-Za-z0-9_]', '_', d.path.stem)}" for i, d in enumerate(datasets)]
    return names, datasets


def _structured_args(
    recipe: Recipe,
    base_model: str,
    quantization: str | None,
    run_dir: Path,
    dataset_names: list[str],
    eval_dataset: str | None,
) -> dict[str, Any]:
    """The keys ftw sets from the recipe's structure (OWNED_TRAIN_KEYS)."""
    structured = {
        "model_name_or_path": base_model,
        "finetuning_type": "full" if recipe.method == "full" else "lora",
        "template": recipe.model.template,
        "dataset": ",".join(name for name in dataset_names if name != eval_dataset),
        "dataset_dir": str(run_dir),
        "output_dir": str(run_dir / "adapter"),
    }
    if recipe.method == "qlora" and quantization is None:
        structured.update(quantization_bit=4, quantization_method="bnb")
    if recipe.system is not None:
        structured["default_system"] = recipe.system
    return structured


def build_plan(
    recipe: Recipe, profile: Profile, run: str, data_files: list[str], ignore_fit: bool = False
) -> tuple[RunPlan, list[DatasetFile]]:
    check_run_name(run)
    run_dir = runs_dir() / run
    base_model = resolve_model(recipe.model.base, recipe, "model.base")
    quantization = bnb_quantization(base_model)
    merge_base, merge_base_source = choose_merge_base(recipe, base_model, quantization, run_dir)
    _check_template(recipe)
    # Data made by `ftw data prepare` for this run is used while it exists, unless --data says otherwise.
    prepared = None if data_files else load_prepared(run_dir)
    dataset_names, datasets = _datasets(recipe, data_files, prepared)

    args, origins = tuned_args(recipe, profile)
    fit = None
    if profile.device == "cuda" and profile.memory_gb > 0:  # the generic `cuda` profile promises no memory
        fit = _fit_to_profile(recipe, profile, args, origins, base_model, quantization, run_dir, ignore_fit)
        if origins.get("enable_liger_kernel") == NO_LIGER:  # said where render and plan show the planner's notes
            fit["notes"] = [*fit["notes"], NO_LIGER]
    elif profile.gpus > 1:  # no memory plan, yet its processes must keep the recipe's effective batch too
        processes.apply_process_args(args, origins, profile, recipe.doc.overrides)
    if prepared:
        prepared.apply_to_args(args, origins, DEFAULT_ORIGIN)
    structured = _structured_args(recipe, base_model, quantization, run_dir, dataset_names, args.get("eval_dataset"))
    for key, value in structured.items():
        args[key] = value
        recipe_key = _recipe_key_for(key)
        origins[key] = str(recipe.doc.origin(recipe_key)) if recipe_key else f"--run {run}"
    if prepared:
        origins["dataset"] = prepared.origin
    dtype = compute_dtype.for_cpu(recipe.model.cpu_dtype) if profile.device == "cpu" else None
    if dtype is not None:
        _load_base_in(dtype, recipe, base_model, run_dir, args, origins)
    method = recipe.method
    if "quantization_bit" in args or (quantization and method == "lora"):
        method = "qlora"

    plan = RunPlan(
        run=run,
        run_dir=str(run_dir),
        recipe=recipe.name,
        recipe_file=display_path(recipe.doc.path),
        profile=profile.name,
        profile_file=display_path(profile.doc.path),
        method=method,
        template=recipe.model.template,
        system=recipe.system,
        base_model=base_model,
        base_quantization=quantization,
        merge_base=merge_base,
        merge_base_source=merge_base_source,
        datasets=[
            {"name": name, "path": str(d.path), "format": d.format, "rows": d.rows, "sha256": d.sha256}
            for name, d in zip(dataset_names, datasets)
        ],
        train_args=args,
        export_args=_export_args(recipe, run_dir, merge_base),
        origins=origins,
        checks=[asdict(c) for c in recipe.checks],
        ollama_parameters=recipe.ollama.parameters,
        gpus=profile.gpus,
        device=profile.device,
        compute_dtype=dtype.dtype if dtype else None,
        compute_dtype_reason=dtype.reason if dtype else None,
        fit=fit,
        prepared_data=prepared.summary() if prepared else None,
        eval=eval_settings(recipe),
    )
    return plan, datasets


def eval_settings(recipe: Recipe) -> dict[str, Any]:
    """The recipe's eval: section as `ftw eval` reads it from the plan: its prompt files as absolute paths."""
    settings = asdict(recipe.eval)
    for name in ("control", "general"):
        if settings[name]:
            path = Path(settings[name]).expanduser()
            settings[name] = str(path if path.is_absolute() else (recipe.folder / path).resolve())
    return settings


def _load_base_in(
    dtype: compute_dtype.ComputeDtype, recipe: Recipe, base_model: str, run_dir: Path, args: dict, origins: dict
) -> None:
    """On a CPU, LLaMA-Factory loads the base from a folder whose config.json says `dtype` when the base's own
    says otherwise (wrapper/train/base_dtype.py; `ftw train` makes it)."""
    try:
        config = model_config(base_model)
    except FtwError:  # a hub id not downloaded: `ftw train` downloads it, as LLaMA-Factory would
        config = None
    if not base_dtype.needs_folder(config, dtype.dtype):
        return
    args["model_name_or_path"] = str(base_dtype.folder_for(run_dir, dtype.dtype))
    origins["model_name_or_path"] = (
        f"{recipe.doc.origin('model.base')} with config.json's dtype set to {dtype.dtype} ({dtype.reason})"
    )


def _recipe_key_for(arg: str) -> str | None:
    return {
        "model_name_or_path": "model.base",
        "template": "model.template",
        "dataset": "dataset",
        "finetuning_type": "method",
        "quantization_bit": "method",
        "quantization_method": "method",
        "default_system": "system",
    }.get(arg)


def _export_args(recipe: Recipe, run_dir: Path, merge_base: str) -> dict[str, Any]:
    args = dict(EXPORT_DEFAULTS)
    args["template"] = recipe.model.template
    if recipe.method == "full":
        args.update(model_name_or_path=str(run_dir / "adapter"), finetuning_type="full")
    else:
        args.update(
            model_name_or_path=merge_base, adapter_name_or_path=str(run_dir / "adapter"), finetuning_type="lora"
        )
    # LLaMA-Factory writes straight into export_dir; ftw renames it to merged/ once complete.
    args["export_dir"] = str(run_dir / "merged.partial")
    for key, value in recipe.export.items():
        if key in OWNED_EXPORT_KEYS:
            raise FtwError(f"{recipe.doc.origin(f'export.{key}')}: '{key}' is set by ftw; remove it here")
        args[key] = value
    return args


def _sections(args: dict[str, Any], classes) -> list[tuple[str, list[str]]]:
    index = llamafactory.field_index(classes)
    titles = {
        "ModelArguments": "model",
        "FinetuningArguments": "method",
        "DataArguments": "dataset",
        "TrainingArguments": "train",
        "GeneratingArguments": "generation",
    }
    grouped: dict[str, list[str]] = {title: [] for title in titles.values()}
    for key in args:
        owner = index.get(key, ("TrainingArguments", None))[0]
        grouped[titles[owner]].append(key)
    return [(title, keys) for title, keys in grouped.items() if keys]


def render_files(plan: RunPlan, datasets: list[DatasetFile]) -> dict[str, str]:
    env = template_env()
    header = {"recipe_file": plan.recipe_file, "profile_file": plan.profile_file, "run": plan.run}
    return {
        "train.yaml": env.get_template("train.yaml.j2").render(
            **header,
            args=plan.train_args,
            origins=plan.origins,
            sections=_sections(plan.train_args, llamafactory.train_classes()),
        ),
        "export.yaml": env.get_template("export.yaml.j2").render(
            **header,
            args=plan.export_args,
            merge_base_source=plan.merge_base_source,
            sections=_sections(plan.export_args, llamafactory.export_classes()),
        ),
        "dataset_info.json": env.get_template("dataset_info.json.j2").render(
            datasets={entry["name"]: d.dataset_info_entry() for entry, d in zip(plan.datasets, datasets)}
        ),
    }


def render(
    recipe_name: str, profile_name: str, run: str, data_files: list[str], overrides: list[str], ignore_fit: bool = False
) -> RunPlan:
    recipe = load_recipe(recipe_name, overrides)
    profile = load_profile(profile_name)
    plan, datasets = build_plan(recipe, profile, run, data_files, ignore_fit)
    plan.overrides = list(overrides)
    files = render_files(plan, datasets)
    if plan.fit and plan.fit.get("deepspeed_template"):
        files["ds_config.json"] = (TEMPLATES_DIR / "deepspeed" / plan.fit["deepspeed_template"]).read_text(
            encoding="utf-8"
        )

    # Check what LLaMA-Factory will read: the rendered YAML, parsed back.
    train_for_check = yaml.safe_load(files["train.yaml"])
    if "ds_config.json" in files:
        # Not written yet (nothing is until every check passed): check against its template.
        train_for_check["deepspeed"] = str(TEMPLATES_DIR / "deepspeed" / plan.fit["deepspeed_template"])
    plan.skipped_checks = llamafactory.check_train_args(
        train_for_check, plan.origins, f"{plan.run}/train.yaml", full_check=profile_matches_machine(profile)
    )
    stops.check_end_of_turn(plan)  # will the trained model stop? (wrapper/train/stops.py)
    export_for_check = yaml.safe_load(files["export.yaml"])
    if plan.merge_base_source.startswith("a dequantized copy"):
        # The copy is made at export; check the arguments against the quantized base meanwhile.
        export_for_check["model_name_or_path"] = plan.base_model
    llamafactory.check_export_args(export_for_check, {}, f"{plan.run}/export.yaml")

    plan.dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_text_atomic(plan.dir / name, text)
    manifest.start(plan)
    return plan


def profile_matches_machine(profile: Profile) -> bool:
    """LLaMA-Factory's full check tests the machine (bf16 needs a GPU); run it only where it means something."""
    if profile.device == "cpu":
        return True
    if profile.gpus > 1:  # its full check insists on being launched by torchrun, which render isn't
        return False
    import torch

    # With several GPUs visible, one process can't pass it either ("Please launch distributed training").
    return torch.cuda.is_available() and torch.cuda.device_count() == 1
