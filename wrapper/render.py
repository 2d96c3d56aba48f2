"""Render stage: recipe + profile (+ the user's data and --set) -> a checked run directory.

Writes runs/RUN/train.yaml, export.yaml and dataset_info.json through the Jinja2
templates in templates/, checks both YAMLs with LLaMA-Factory's parser, and starts the
run's manifest. Nothing long runs here; every mistake is found before training.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from wrapper import manifest
from wrapper.datasets import DatasetFile, inspect_dataset
from wrapper.errors import FtwError
from wrapper.fsutil import write_text_atomic
from wrapper.paths import TEMPLATES_DIR, runs_dir
from wrapper.recipes import Profile, Recipe, display_path, load_profile, load_recipe

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# ASCII: the run's name also names its GGUF files and the Ollama model, which takes no other.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_run_name(run: str) -> None:
    if not RUN_NAME.fullmatch(run):
        raise FtwError(f"--run {run!r}: use ASCII letters, digits, '.', '_' or '-' (it names the folder under runs/, "
                       f"the GGUF files and the Ollama model); the runs folder itself may be any path (FTW_RUNS_DIR)")
DEFAULT_ORIGIN = "ftw default (wrapper/render.py)"

# The project's choices where neither recipe nor profile speaks. Hyperparameters follow
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
    "report_to": "none",
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
OWNED_KEYS = {
    "model_name_or_path": "model.base", "adapter_name_or_path": "model.base", "template": "model.template",
    "dataset": "dataset", "dataset_dir": "dataset", "output_dir": "the run directory (--run)",
    "finetuning_type": "method", "quantization_bit": "method (qlora)", "default_system": "system",
}
# Tokens would end up in train.yaml, the manifest and logs; LLaMA-Factory and huggingface_hub
# read them from the environment (HF_TOKEN) or the login cache instead.
SECRET_KEYS = ("hf_hub_token", "ms_hub_token", "om_hub_token")
# Pre-quantized bitsandbytes checkpoints whose full-precision weights sit beside them on the hub.
BNB_SUFFIXES = ("-unsloth-bnb-4bit", "-bnb-4bit")


@dataclass
class RunPlan:
    """Everything later stages need, resolved once; stored in the manifest under 'plan'."""

    run: str
    run_dir: str
    recipe: str
    recipe_file: str
    profile: str
    profile_file: str
    method: str
    template: str
    system: str | None
    base_model: str
    base_quantization: str | None
    merge_base: str
    merge_base_source: str
    datasets: list[dict]
    train_args: dict[str, Any]
    export_args: dict[str, Any]
    origins: dict[str, str]
    checks: list[dict] = field(default_factory=list)
    ollama_parameters: dict[str, Any] = field(default_factory=dict)
    gpus: int = 1
    fit: dict | None = None  # the planner's verdict for a GPU profile
    skipped_checks: list[str] = field(default_factory=list)  # LLaMA-Factory checks this machine can't run
    prepared_data: dict | None = None  # runs/RUN/data from `ftw data prepare`, when the run uses it
    overrides: list[str] = field(default_factory=list)  # --set, so that a re-render keeps them

    @property
    def dir(self) -> Path:
        return Path(self.run_dir)

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.dir / "merged"

    @property
    def dequantized_base_dir(self) -> Path:
        return self.dir / "base-dequantized"

    @classmethod
    def from_dict(cls, data: dict) -> "RunPlan":
        return cls(**data)


def resolve_model(ref: str, recipe: Recipe, key: str) -> str:
    """A local model folder (relative to the recipe file) as an absolute path, or a hub id as is."""
    origin = recipe.doc.origin(key)
    candidate = (recipe.folder / Path(ref).expanduser()).resolve()
    looks_local = ref.startswith(("/", "./", "../", "~")) or candidate.exists() or not HUB_ID.fullmatch(ref)
    if not looks_local:
        return ref
    if candidate.is_file():
        raise FtwError(f"{origin}: {not_a_model_folder(candidate)}")
    if not candidate.is_dir():
        hint = " Run `make setup` to create the demo model." if "models/" in ref else ""
        raise FtwError(f"{origin}: model folder not found: {candidate}.{hint}")
    if not (candidate / "config.json").is_file():
        raise FtwError(f"{origin}: {candidate} has no config.json; expected a Hugging Face model folder")
    return str(candidate)


def not_a_model_folder(path: Path) -> str:
    """Why a file can't be a base model; a GGUF (what Ollama and LM Studio run) is the usual mistake."""
    from wrapper.gguf_stage import gguf_problem

    training_needs = ("LLaMA-Factory trains from a Hugging Face model folder (config.json and safetensors): "
                      "set it to a hub id such as Qwen/Qwen3-8B or to a downloaded folder")
    problem = gguf_problem(path)
    if problem is None:
        return (f"{path} is a GGUF file, llama.cpp's format for running a model (what Ollama and LM Studio load); "
                f"it can't be fine-tuned. {training_needs}.")
    if path.suffix.lower() == ".gguf":
        return f"{path} is named .gguf but {problem}. {training_needs}."
    return f"{path} is a file, not a model folder. {training_needs}."


def bnb_quantization(model: str) -> str | None:
    path = Path(model)
    if path.is_absolute():
        import json

        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        method = (config.get("quantization_config") or {}).get("quant_method")
        return method if method == "bitsandbytes" else None
    return "bitsandbytes" if model.lower().endswith(BNB_SUFFIXES) else None


def full_precision_sibling(hub_id: str) -> str | None:
    owner, name = hub_id.split("/", 1)
    if owner.lower() != "unsloth":
        return None
    for suffix in BNB_SUFFIXES:
        if name.lower().endswith(suffix):
            return f"{owner}/{name[: -len(suffix)]}"
    return None


def choose_merge_base(recipe: Recipe, base_model: str, quantization: str | None, run_dir: Path) -> tuple[str, str]:
    """The full-precision model a LoRA is merged into, and why that one."""
    if quantization is None:
        return base_model, "the base model"
    if recipe.method == "full":
        raise FtwError(
            f"{recipe.doc.origin('method')}: full fine-tuning needs full-precision weights, but "
            f"{base_model} is a pre-quantized {quantization} checkpoint. Use method: qlora, or its full-precision model."
        )
    if recipe.full_precision_base:
        return resolve_model(recipe.full_precision_base, recipe, "model.full_precision_base"), "model.full_precision_base"
    if not Path(base_model).is_absolute():
        sibling = full_precision_sibling(base_model)
        if sibling:
            return sibling, f"the full-precision sibling of {base_model}"
    # llama.cpp can't read bitsandbytes weights: export makes a dequantized copy to merge into.
    return str(run_dir / "base-dequantized"), f"a dequantized copy of {base_model} (made at export)"


def _tuned_args(recipe: Recipe, profile: Profile) -> tuple[dict[str, Any], dict[str, str]]:
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
            if key in OWNED_KEYS:
                raise FtwError(f"{doc.origin(f'train.{key}')}: '{key}' is set by ftw from {OWNED_KEYS[key]}; remove it here")
            if key in SECRET_KEYS:
                raise FtwError(f"{doc.origin(f'train.{key}')}: a token doesn't belong in a recipe (it would be written "
                               "to train.yaml and the manifest). Remove it; export HF_TOKEN or run `huggingface-cli login`.")
            args[key] = value
            origins[key] = str(doc.origin(f"train.{key}"))
    return args, origins


def _fit_to_profile(recipe: Recipe, profile: Profile, args: dict, origins: dict, base_model: str,
                    quantization: str | None, run_dir: Path, ignore_fit: bool) -> dict:
    """Let the planner choose batch, accumulation, checkpointing, QLoRA and ZeRO for the card; refuse what won't fit."""
    from wrapper import planner

    shape = planner.ModelShape.from_config(planner.model_config(base_model))
    pinned = {key.removeprefix("train.") for key in recipe.doc.overrides if key.startswith("train.")}
    method = "qlora" if quantization else recipe.method
    choice = planner.plan_for_profile(shape, args, method, profile, pinned)
    report = planner.summary(choice, profile)
    if not choice.fits and not ignore_fit:
        m = choice.memory
        raise FtwError(
            f"{recipe.name} does not fit profile {profile.name}: the leanest settings need ~{m.total:.1f} GiB "
            f"(weights {m.weights:.1f}, activations {m.activations:.1f}, logits {m.logits:.1f}, other "
            f"{m.trainable + m.gradients + m.optimizer + m.overhead:.1f}) of {report['budget_gb']:.1f} GiB "
            f"({planner.FIT_FRACTION:.0%} of {profile.memory_gb:g} GiB). Try a shorter cutoff_len "
            f"(--set cutoff_len=1024), a smaller model, a bigger profile, or --ignore-fit to render anyway. "
            f"Details: ftw plan --recipe {recipe.name} --profile {profile.name}"
        )
    where = f"planner for profile {profile.name} (wrapper/planner.py)"
    chosen = planner.args_for(choice, method)
    if "flash_attn" not in args:
        chosen["flash_attn"] = planner.attention_for(profile.compute_capability)
    ds_name = planner.deepspeed_config_name(choice.settings)
    if ds_name:
        chosen.update(deepspeed=str(run_dir / "ds_config.json"), ddp_timeout=180000000)
        report["deepspeed_template"] = ds_name
    for key, value in chosen.items():
        if key not in pinned:
            args[key] = value
            origins[key] = where
    return report


def build_plan(recipe: Recipe, profile: Profile, run: str, data_files: list[str],
               ignore_fit: bool = False) -> tuple[RunPlan, list[DatasetFile]]:
    check_run_name(run)
    run_dir = runs_dir() / run
    base_model = resolve_model(recipe.base_model, recipe, "model.base")
    quantization = bnb_quantization(base_model)
    merge_base, merge_base_source = choose_merge_base(recipe, base_model, quantization, run_dir)

    from wrapper.validate import known_templates

    templates = known_templates()
    if recipe.template not in templates:
        import difflib

        close = difflib.get_close_matches(recipe.template, templates, n=3)
        raise FtwError(f"{recipe.doc.origin('model.template')}: LLaMA-Factory has no chat template "
                       f"'{recipe.template}'." + (f" Close: {', '.join(close)}." if close else ""))

    from wrapper.data_prepare import load_prepared

    # Data made by `ftw data prepare` for this run is used while it exists, unless --data says otherwise.
    prepared = None if data_files else load_prepared(run_dir)
    if data_files:
        paths = [Path(p).expanduser().resolve() for p in data_files]
    else:
        paths = [(recipe.folder / p).resolve() for p in recipe.datasets]
    if prepared:
        dataset_names, datasets = [name for name, _ in prepared.files], [d for _, d in prepared.files]
    else:
        datasets = [inspect_dataset(p) for p in paths]
        dataset_names = [f"ftw_{i}_{re.sub(r'[^A-Za-z0-9_]', '_', d.path.stem)}" for i, d in enumerate(datasets)]

    args, origins = _tuned_args(recipe, profile)
    fit = None
    if profile.device == "cuda" and profile.memory_gb > 0:  # the generic `cuda` profile promises no memory
        fit = _fit_to_profile(recipe, profile, args, origins, base_model, quantization, run_dir, ignore_fit)
    if prepared:
        prepared.apply_to_args(args, origins, DEFAULT_ORIGIN)
    structured = {
        "model_name_or_path": base_model,
        "finetuning_type": "full" if recipe.method == "full" else "lora",
        "template": recipe.template,
        "dataset": ",".join(name for name in dataset_names if name != args.get("eval_dataset")),
        "dataset_dir": str(run_dir),
        "output_dir": str(run_dir / "adapter"),
    }
    if recipe.method == "qlora" and quantization is None:
        structured.update(quantization_bit=4, quantization_method="bnb")
    method = recipe.method
    if "quantization_bit" in args or (quantization and method == "lora"):
        method = "qlora"
    if recipe.system is not None:
        structured["default_system"] = recipe.system
    for key, value in structured.items():
        args[key] = value
        recipe_key = _recipe_key_for(key)
        origins[key] = str(recipe.doc.origin(recipe_key)) if recipe_key else f"--run {run}"
    if prepared:
        origins["dataset"] = prepared.origin

    export_args = _export_args(recipe, run_dir, merge_base)
    plan = RunPlan(
        run=run, run_dir=str(run_dir),
        recipe=recipe.name, recipe_file=display_path(recipe.doc.path),
        profile=profile.name, profile_file=display_path(profile.doc.path),
        method=method, template=recipe.template, system=recipe.system,
        base_model=base_model, base_quantization=quantization,
        merge_base=merge_base, merge_base_source=merge_base_source,
        datasets=[{"name": name, "path": str(d.path), "format": d.format, "rows": d.rows, "sha256": d.sha256}
                  for name, d in zip(dataset_names, datasets)],
        train_args=args, export_args=export_args, origins=origins,
        checks=[asdict(c) for c in recipe.checks],
        ollama_parameters=recipe.ollama_parameters,
        gpus=profile.gpus,
        fit=fit,
        prepared_data=prepared.summary() if prepared else None,
    )
    return plan, datasets


def _recipe_key_for(arg: str) -> str | None:
    return {"model_name_or_path": "model.base", "template": "model.template", "dataset": "dataset",
            "finetuning_type": "method", "quantization_bit": "method", "quantization_method": "method",
            "default_system": "system"}.get(arg)


def _export_args(recipe: Recipe, run_dir: Path, merge_base: str) -> dict[str, Any]:
    args = dict(EXPORT_DEFAULTS)
    args["template"] = recipe.template
    if recipe.method == "full":
        args.update(model_name_or_path=str(run_dir / "adapter"), finetuning_type="full")
    else:
        args.update(model_name_or_path=merge_base, adapter_name_or_path=str(run_dir / "adapter"), finetuning_type="lora")
    # LLaMA-Factory writes straight into export_dir; ftw renames it to merged/ once complete.
    args["export_dir"] = str(run_dir / "merged.partial")
    for key, value in recipe.export.items():
        if key in ("model_name_or_path", "adapter_name_or_path", "export_dir", "template", "finetuning_type"):
            raise FtwError(f"{recipe.doc.origin(f'export.{key}')}: '{key}' is set by ftw; remove it here")
        args[key] = value
    return args


def yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 30)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yaml"] = yaml_scalar
    return env


def _sections(args: dict[str, Any], classes) -> list[tuple[str, list[str]]]:
    from wrapper.validate import field_index

    index = field_index(classes)
    titles = {"ModelArguments": "model", "FinetuningArguments": "method", "DataArguments": "dataset",
              "TrainingArguments": "train", "GeneratingArguments": "generation"}
    grouped: dict[str, list[str]] = {title: [] for title in titles.values()}
    for key in args:
        owner = index.get(key, ("TrainingArguments", None))[0]
        grouped[titles[owner]].append(key)
    return [(title, keys) for title, keys in grouped.items() if keys]


def render_files(plan: RunPlan, datasets: list[DatasetFile]) -> dict[str, str]:
    from wrapper.validate import _export_classes, _train_classes

    env = template_env()
    header = {"recipe_file": plan.recipe_file, "profile_file": plan.profile_file, "run": plan.run}
    return {
        "train.yaml": env.get_template("train.yaml.j2").render(
            **header, args=plan.train_args, origins=plan.origins,
            sections=_sections(plan.train_args, _train_classes())),
        "export.yaml": env.get_template("export.yaml.j2").render(
            **header, args=plan.export_args, merge_base_source=plan.merge_base_source,
            sections=_sections(plan.export_args, _export_classes())),
        "dataset_info.json": env.get_template("dataset_info.json.j2").render(
            datasets={entry["name"]: d.dataset_info_entry() for entry, d in zip(plan.datasets, datasets)}),
    }


def render(recipe_name: str, profile_name: str, run: str, data_files: list[str], overrides: list[str],
           ignore_fit: bool = False) -> RunPlan:
    from wrapper import validate

    recipe = load_recipe(recipe_name, overrides)
    profile = load_profile(profile_name)
    plan, datasets = build_plan(recipe, profile, run, data_files, ignore_fit)
    plan.overrides = list(overrides)
    files = render_files(plan, datasets)
    if plan.fit and plan.fit.get("deepspeed_template"):
        files["ds_config.json"] = (TEMPLATES_DIR / "deepspeed" / plan.fit["deepspeed_template"]).read_text(encoding="utf-8")

    # Check what LLaMA-Factory will read: the rendered YAML, parsed back.
    train_for_check = yaml.safe_load(files["train.yaml"])
    if "ds_config.json" in files:
        # Not written yet (nothing is until every check passed): check against its template.
        train_for_check["deepspeed"] = str(TEMPLATES_DIR / "deepspeed" / plan.fit["deepspeed_template"])
    plan.skipped_checks = validate.check_train_args(
        train_for_check, plan.origins, f"{plan.run}/train.yaml", full_check=profile_matches_machine(profile))
    export_for_check = yaml.safe_load(files["export.yaml"])
    if plan.merge_base_source.startswith("a dequantized copy"):
        # The copy is made at export; check the arguments against the quantized base meanwhile.
        export_for_check["model_name_or_path"] = plan.base_model
    validate.check_export_args(export_for_check, {}, f"{plan.run}/export.yaml")

    plan.dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_text_atomic(plan.dir / name, text)
    manifest.start(plan)
    return plan


def profile_matches_machine(profile: Profile) -> bool:
    """LLaMA-Factory's full check tests the machine (bf16 needs a GPU); run it only where it means something."""
    if profile.device == "cpu":
        return True
    import torch

    return torch.cuda.is_available()
