"""What Ollama reads from a Hugging Face repository (`ollama run hf.co/USER/NAME:Q4_K_M`), taken
from the run's verified Modelfile so that the Hub serves exactly what was checked against the
training format.

The Hub's Ollama integration (huggingface/hub-docs, docs/hub/ollama.md) reads three optional
files at the repository's root: `template` (a Go template, Ollama's TEMPLATE), `system` (the
system prompt) and `params` (JSON: Ollama's parameters, e.g. {"stop": [...], "temperature": 0.2}).
Without `template` the Hub guesses one from the GGUF's Jinja chat template, which is not
guaranteed to be the training format. The tag picks the GGUF whose file name carries the
quant (case-insensitive), Q4_K_M when there is no tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from wrapper.config.ollama import OLLAMA_PARAMETERS
from wrapper.core.errors import FtwError
from wrapper.prompts import gorender

# The opening comments of templates/Modelfile.j2 that are about the run's own folder.
LOCAL_COMMENTS = ("# Ollama Modelfile for run", "# Create the model with:")
TEMPLATE_FILE, SYSTEM_FILE, PARAMS_FILE, MODELFILE = "template", "system", "params", "Modelfile"


@dataclass(frozen=True)
class OllamaFiles:
    """A Modelfile as Ollama reads it: FROM, TEMPLATE, SYSTEM, stops and the other PARAMETERs (in order)."""

    model: str
    template: str
    system: str
    stops: list[str]
    parameters: list[tuple[str, str]]

    @classmethod
    def read(cls, text: str, where: str) -> OllamaFiles:
        commands = gorender.parse_modelfile(text)
        values = dict(commands)
        if "model" not in values or "template" not in values:
            raise FtwError(f"{where} has no FROM or no TEMPLATE. Write it again: ftw modelfile --run RUN --force")
        return cls(
            model=values["model"],
            template=values["template"],
            system=values.get("system", ""),
            stops=[args for name, args in commands if name == "stop"],
            parameters=[(name, args) for name, args in commands if name in OLLAMA_PARAMETERS and name != "stop"],
        )

    def params(self) -> dict:
        """The `params` file: every PARAMETER with the JSON type Ollama's options take (stop: a list)."""
        found: dict = {"stop": list(self.stops)} if self.stops else {}
        for name, value in self.parameters:
            found[name] = typed(name, value)
        return found

    def params_json(self) -> str:
        return json.dumps(self.params(), ensure_ascii=False, indent=2) + "\n"


def typed(name: str, value: str):
    """A PARAMETER's text as the type Ollama's options hold (wrapper/config/ollama.py knows them)."""
    kind = OLLAMA_PARAMETERS[name]
    if kind is bool:
        return value == "true"
    return kind(value)


def repo_modelfile(text: str, files: OllamaFiles, gguf_name: str, repo_id: str, run: str) -> str:
    """The run's Modelfile for the repository: its FROM names the GGUF beside it and its opening comments
    (which name a local folder) say how to use it from the Hub; every other line is kept byte for byte."""
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith("FROM ")), None)
    if at is None or lines[at].rstrip("\r\n") != f"FROM {files.model}":
        raise FtwError(
            f"the run's Modelfile has no plain `FROM {files.model}` line. "
            f"Write it again: ftw modelfile --run {run} --force"
        )
    opening = at
    while opening > 0 and lines[opening - 1].startswith("#"):
        opening -= 1
    header = [
        f"# Ollama Modelfile of {repo_id}, published by `ftw publish` from run '{run}'.\n",
        f"# Without downloading anything:  ollama run hf.co/{repo_id}\n",
        f"# From a download of the repository:  ollama create {repo_id.split('/')[1].lower()} -f Modelfile\n",
    ]
    # The first two name the run's folder on this machine (`cd /home/... && ollama create`); the rest stay.
    kept_comments = [
        line for line in lines[opening:at] if not line.startswith(LOCAL_COMMENTS) and "ollama create" not in line
    ]
    return "".join(lines[:opening] + header + kept_comments + [f"FROM ./{gguf_name}\n"] + lines[at + 1 :])
