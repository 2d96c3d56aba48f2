"""Modelfile stage: an Ollama Modelfile for the run's quantized GGUF.

FROM is the quantized file (relative to the Modelfile, so the run folder can move),
TEMPLATE and stop tokens follow the LLaMA-Factory template the model was trained
with, SYSTEM is the recipe's system prompt or else that template's default one (the
one training used), and PARAMETERs come from the recipe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from wrapper import manifest
from wrapper.errors import FtwError
from wrapper.fsutil import write_text_atomic
from wrapper.gguf_stage import artifact_key
from wrapper.paths import TEMPLATES_DIR
from wrapper.render import template_env
from wrapper.ui import console, done

# LLaMA-Factory template -> Ollama TEMPLATE (templates/ollama/NAME.gotmpl) that renders the same text.
OLLAMA_TEMPLATES = {
    "chatml": "chatml", "smollm": "chatml", "smollm2": "chatml", "qwen": "chatml", "qwen2_vl": "chatml",
    "qwen3_nothink": "chatml", "llama3": "llama3",
}


def modelfile_quote(text: str) -> str:
    if '"""' in text or text.endswith('"'):
        raise FtwError(f'Ollama can\'t quote a Modelfile value containing """ or ending in a quote: {text[:60]!r}')
    return f'"""{text}"""'


def stop_tokens(template_name: str, merged_dir: Path) -> list[str]:
    import json

    from llamafactory.data.template import TEMPLATES

    stops = list(TEMPLATES[template_name].stop_words)
    config_path = merged_dir / "tokenizer_config.json"
    if config_path.is_file():
        eos = json.loads(config_path.read_text(encoding="utf-8")).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if eos and eos not in stops:
            stops.append(eos)
    return stops


def ollama_model_name(run: str) -> str:
    return run.lower().replace("_", "-")


def write_modelfile(run_dir: Path, quant: str = "Q4_K_M") -> Path:
    from wrapper.inference import default_system

    plan = manifest.plan_of(run_dir)
    gguf = manifest.artifact(run_dir, artifact_key(quant), "ftw gguf")
    merged = manifest.artifact(run_dir, "merged", "ftw export")
    if plan.template not in OLLAMA_TEMPLATES:
        raise FtwError(f"ftw has no Ollama TEMPLATE for LLaMA-Factory's '{plan.template}' template yet "
                       f"(have: {', '.join(sorted(OLLAMA_TEMPLATES))}).")
    go_template = (TEMPLATES_DIR / "ollama" / f"{OLLAMA_TEMPLATES[plan.template]}.gotmpl").read_text(encoding="utf-8")
    env = template_env()
    env.filters["modelfile_quote"] = modelfile_quote
    path = run_dir / "Modelfile"
    text = env.get_template("Modelfile.j2").render(
        run=plan.run,
        model_name=ollama_model_name(plan.run),
        modelfile_path=path,
        template_name=plan.template,
        gguf_from="./" + os.path.relpath(gguf, run_dir),
        go_template=go_template.rstrip("\n"),
        system=plan.system if plan.system is not None else default_system(plan.template),
        stops=stop_tokens(plan.template, merged),
        parameters=plan.ollama_parameters,
    )
    write_text_atomic(path, text)
    manifest.record_artifacts(run_dir, modelfile=path)
    done(f"Modelfile (FROM {gguf.name}) -> {path}")
    return path


def ollama_create(run_dir: Path) -> None:
    path = manifest.artifact(run_dir, "modelfile", "ftw modelfile")
    name = ollama_model_name(run_dir.name)
    argv = ["ollama", "create", name, "-f", str(path)]
    if shutil.which("ollama") is None:
        console.print("Ollama is not installed here. On the machine that has it, run:")
        console.print(f"  cd {run_dir} && ollama create {name} -f Modelfile && ollama run {name}", soft_wrap=True)
        return
    subprocess.run(argv, check=True)
    done(f"ollama model '{name}' created; try: ollama run {name}")
