"""One cell end to end: `ftw render` of the shipped recipe (or LLaMA-Factory's example with its keys
swapped), its training in a child process, and what was measured set beside the planner's numbers."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from wrapper.config import planner
from wrapper.config.models import model_config
from wrapper.config.profiles import load_profile

from .child import run_child
from .estimate import CellSpec
from .inputs import shipped_recipe_for, write_dataset, write_recipe_copy
from .settings import (
    EXAMPLE_NAME,
    FIT_TARGET,
    GIB,
    MAX_CONTEXT_ACCUM,
    MAX_CONTEXT_PLUS,
    PLANNER_TOLERANCE,
    SMOKE_ACCUM,
    console,
    example_config,
    load_yaml_like_llamafactory,
    now,
    slug,
)
from tests.support.runner import FTW, REPO


class Bench:
    def __init__(self, options, gpu: dict, peak: float | None, command: str):
        self.o = options
        self.gpu = gpu
        self.peak = peak
        self.command = command
        self.device = "cuda" if gpu.get("cuda") else "cpu"
        self.con = console()
        self.datasets: dict[tuple[int, int], tuple[Path, str]] = {}

    def dataset(self, cutoff: int, rows: int) -> tuple[Path, str]:
        """The synthetic data at this cutoff; call it from one thread (it updates dataset_info.json)."""
        if (cutoff, rows) not in self.datasets:
            self.datasets[(cutoff, rows)] = write_dataset(Path(self.o.cache) / "data", cutoff, rows)
        return self.datasets[(cutoff, rows)]

    def recipe_copy(self, hub_id: str, model_dir: Path) -> Path:
        folder = Path(self.o.cache) / "recipes" / ("smoke" if self.o.cpu_smoke else "gpu")
        return write_recipe_copy(shipped_recipe_for(hub_id), model_dir, folder)

    def base_cell(self, spec: CellSpec) -> dict:
        profile = load_profile(spec.profile)
        # smoke cells never carry a hub id, so planner.measured_mfu can't mistake them for measurements
        cell = {
            "kind": spec.kind,
            "model": f"smoke:{spec.hub}" if self.o.cpu_smoke else spec.hub,
            "profile": profile.name,
            "memory_gb": profile.memory_gb,
            "gpu": self.gpu.get("gpu", "cpu"),
            "steps": spec.steps,
            "cutoff": spec.cutoff,
            "command": self.command,
            "measured_at": now(),
        }
        if spec.context is not None:
            context = {k: v for k, v in spec.context.items() if k != "cutoff"}
            cell.update(
                context,
                plus=MAX_CONTEXT_PLUS if spec.kind == "max_context_plus10" else 0.0,
                beyond_model_context=spec.cutoff > context["model_context"],  # +10% of a model's whole context
            )
        if spec.error:
            cell.update(fits=None, oom=False, error=spec.error)
        return cell

    def train(self, cell: dict, yaml_path: Path, log: Path) -> dict:
        spec = {"yaml": str(yaml_path), "device": self.device, "budget_gb": cell["memory_gb"]}
        result, error, elapsed = run_child("train", spec, log, self.o.cell_timeout)
        cell["log"] = str(log)
        cell["wall_s"] = round(elapsed, 1)
        if result is None:
            cell.update(fits=None, oom=False, error=error)
            return {}
        cell["fits"] = result["status"] == "ok"
        cell["oom"] = result["status"] == "oom"
        cell["error"] = result["error"]
        if result.get("overrides"):
            cell["cpu_smoke_overrides"] = result["overrides"]
        return result

    def finish(self, cell: dict, result: dict, shape, settings) -> dict:
        gb = lambda key: round(result[key] / GIB, 3) if result.get(key) else None  # noqa: E731
        for key in (
            "peak_allocated",
            "peak_reserved",
            "train_peak_allocated",
            "train_peak_reserved",
            "load_peak_allocated",
            "load_peak_reserved",
        ):
            cell[f"{key}_gb"] = gb(f"{key}_bytes")
        cell["device_used_gb"] = gb("device_used_bytes")
        cell["alloc_retries"] = result.get("alloc_retries")
        cell["memory_fraction"] = result.get("memory_fraction")
        micro, accum = result.get("micro_batch"), result.get("grad_accum")
        cell["micro_batch"], cell["grad_accum"] = micro, accum
        cell["gradient_checkpointing"] = result.get("gradient_checkpointing")
        samples = result.get("sample_tokens") or {}
        cell["sample_tokens"] = samples
        cell["all_samples_at_cutoff"] = samples.get("min") == samples.get("max") == cell["cutoff"]
        per_sample = cell["cutoff"] if cell["all_samples_at_cutoff"] else samples.get("mean")
        cell["tokens_per_step"] = int(micro * accum * per_sample) if micro and accum and per_sample else None
        cell["timed_steps"] = result.get("timed_steps")
        cell["timed_seconds"] = round(result["timed_seconds"], 3) if result.get("timed_seconds") else None
        cell["first_step_s"] = result.get("first_step_s")
        cell["seconds_to_train_begin"] = result.get("seconds_to_train_begin")
        tps = None
        if cell["fits"] and cell["timed_seconds"] and cell["tokens_per_step"]:
            tps = cell["timed_steps"] * cell["tokens_per_step"] / cell["timed_seconds"]
        cell["tokens_per_s"] = round(tps, 1) if tps else None
        flops = planner.train_flops_per_token(shape, settings)
        cell["flops_per_token"] = flops
        cell["peak_bf16_tflops"] = self.peak
        cell["mfu"] = round(tps * flops / (self.peak * 1e12), 4) if tps and self.peak else None
        reserved = cell["peak_reserved_gb"]
        cell["budget_fraction"] = round(reserved / cell["memory_gb"], 4) if reserved and cell["memory_gb"] else None
        cell["within_92pct"] = (
            (cell["fits"] and cell["budget_fraction"] is not None and cell["budget_fraction"] <= FIT_TARGET)
            if self.device == "cuda"
            else None
        )
        estimate = cell.get("planner_peak_gb")
        if cell["fits"] and reserved and estimate:
            cell["planner_error"] = round(reserved / estimate - 1, 4)
            cell["planner_within_15pct"] = abs(cell["planner_error"]) <= PLANNER_TOLERANCE
        else:
            cell["planner_error"] = cell["planner_within_15pct"] = None
        return cell

    def render_ftw(self, spec: CellSpec, model_dir: Path) -> tuple[dict, Path | None]:
        """`ftw render` of the shipped recipe (base swapped) for the profile; the cell so far and the run folder.
        A max-context cell pins its cutoff, micro-batch 1 and use_unsloth_gc (what the planner's longest assumes)."""
        cell = self.base_cell(spec)
        if spec.error:
            return cell, None
        shipped = shipped_recipe_for(spec.hub)
        recipe = self.recipe_copy(spec.hub, model_dir)
        suffix = "" if spec.kind == "ftw" else "-" + slug(spec.kind)
        run = f"bench-{slug(spec.hub)}-{slug(spec.profile)}{suffix}" + ("-smoke" if self.o.cpu_smoke else "")
        runs = Path(self.o.cache) / "runs"
        sets = [f"max_steps={spec.steps}", "logging_steps=1", "save_steps=100000"]
        if spec.kind == "ftw" and self.o.cpu_smoke:
            sets += [f"cutoff_len={spec.cutoff}", f"gradient_accumulation_steps={SMOKE_ACCUM}"]
        elif spec.kind != "ftw":
            sets += [
                f"cutoff_len={spec.cutoff}",
                "per_device_train_batch_size=1",
                f"gradient_accumulation_steps={MAX_CONTEXT_ACCUM}",
                "use_unsloth_gc=true",
            ]
        dataset, _ = self.datasets[(spec.cutoff, spec.rows)]
        argv = [
            "render",
            "--recipe",
            str(recipe),
            "--profile",
            spec.profile,
            "--run",
            run,
            "--data",
            str(dataset),
            "--ignore-fit",
        ] + [x for s in sets for x in ("--set", s)]
        cell.update(recipe=str(shipped.relative_to(REPO)), render_command="ftw " + shlex.join(argv))
        env = dict(os.environ, FTW_RUNS_DIR=str(runs), COLUMNS="200", HF_HUB_OFFLINE="1")
        rendered = subprocess.run([*FTW, *argv], cwd=REPO, env=env, capture_output=True, text=True)
        if rendered.returncode != 0:
            cell.update(
                fits=None,
                oom=False,
                error=f"ftw render failed ({rendered.returncode}):\n{rendered.stdout[-2000:]}{rendered.stderr[-2000:]}",
            )
            return cell, None
        return cell, runs / run

    def ftw_cell(self, cell: dict, run_dir: Path | None, model_dir: Path) -> dict:
        """A rendered run (kind ftw, or a max-context cell) trained as `llamafactory-cli train` would."""
        if run_dir is None:  # render failed, or the planner fits no cutoff
            return cell
        cell["measured_at"] = now()
        plan = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["plan"]
        fit = plan["fit"] or {}
        settings = planner.Settings(**fit["settings"])
        train_yaml = load_yaml_like_llamafactory(run_dir / "train.yaml")
        cell.update(
            method=plan["method"],
            planner_peak_gb=fit.get("peak_vram_gb"),
            planner_fits=fit.get("fits"),
            planner_memory_gb=fit.get("memory_gb"),
            planner_settings=fit.get("settings"),
            planner_notes=fit.get("notes"),
            offload_checkpoints=bool(train_yaml.get("use_unsloth_gc", False)),
            host_ram_gb=fit.get("host_ram_gb"),
            train_yaml=str(run_dir / "train.yaml"),
            settings=_key_settings(plan["train_args"]),
        )
        shutil.rmtree(plan["train_args"]["output_dir"], ignore_errors=True)
        result = self.train(cell, run_dir / "train.yaml", Path(self.o.cache) / "logs" / f"{run_dir.name}.log")
        shape = planner.ModelShape.from_config(model_config(str(model_dir)))
        return self.finish(cell, result, shape, settings)

    def example_cell(self, spec: CellSpec, model_dir: Path, template: str) -> dict:
        cell = self.base_cell(spec)
        dataset, dataset_name = self.datasets[(spec.cutoff, spec.rows)]
        args, source = example_config()
        name = f"example-{slug(spec.hub)}-{slug(spec.profile)}" + ("-smoke" if self.o.cpu_smoke else "")
        out_dir = Path(self.o.cache) / "example-runs" / name
        swapped = {
            "model_name_or_path": str(model_dir),
            "template": template,
            "dataset": dataset_name,
            "dataset_dir": str(dataset.parent),
            "cutoff_len": spec.cutoff,
            "output_dir": str(out_dir),
            "max_steps": spec.steps,
            "logging_steps": 1,
        }
        if self.o.cpu_smoke:
            swapped["gradient_accumulation_steps"] = SMOKE_ACCUM
        changed = {k: v for k, v in swapped.items() if args.get(k) != v}
        args.update(swapped)
        yaml_path = Path(self.o.cache) / "example-yaml" / f"{name}.yaml"
        yaml_path.parent.mkdir(parents=True, exist_ok=True)
        yaml_path.write_text(
            f"# LLaMA-Factory's {EXAMPLE_NAME} ({source}) with these keys swapped by "
            f"bench/profiles: {', '.join(changed)}\n" + yaml.safe_dump(args, sort_keys=False),
            encoding="utf-8",
        )
        settings = planner.settings_from_args(args, "qlora" if args.get("quantization_bit") else "lora", 1)
        shape = planner.ModelShape.from_config(model_config(str(model_dir)))
        estimate = planner.estimate_memory(shape, settings)
        cell.update(
            example=source,
            method=settings.method,
            swapped_keys=sorted(changed),
            train_yaml=str(yaml_path),
            planner_peak_gb=round(estimate.total, 2),
            planner_fits=estimate.total <= cell["memory_gb"] * planner.FIT_FRACTION,
            offload_checkpoints=bool(args.get("use_unsloth_gc", False)),
            host_ram_gb=round(planner.host_ram_gb(shape, settings), 2),
            settings=_key_settings(args),
        )
        shutil.rmtree(out_dir, ignore_errors=True)
        result = self.train(cell, yaml_path, Path(self.o.cache) / "logs" / f"{name}.log")
        return self.finish(cell, result, shape, settings)


def _key_settings(args: dict) -> dict:
    keys = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "disable_gradient_checkpointing",
        "quantization_bit",
        "optim",
        "enable_liger_kernel",
        "flash_attn",
        "lora_rank",
        "lora_target",
        "bf16",
        "cutoff_len",
        "use_unsloth_gc",
    )
    return {key: args[key] for key in keys if key in args}
