"""The teacher models `ftw data synth` asks, all behind one small interface.

A teacher takes chat messages and a JSON schema and returns the reply text with its token
counts. Where the reply's shape can be enforced it is: in-process llama.cpp turns the schema
into a grammar; an OpenAI-compatible server gets it as `response_format` (llama.cpp's server,
Ollama, LM Studio and vLLM honour it); a server that refuses `response_format` is asked
again without it, and the caller parses and retries.

`--teacher` names one of:
  http(s)://HOST:PORT/v1      any OpenAI-compatible endpoint (`--teacher-model` names the model)
  path/to/model.gguf          a GGUF file, loaded in-process by llama-cpp-python
  run:NAME                    an earlier ftw run's quantized GGUF (runs/NAME, from `ftw gguf`)
  ollama:NAME[:TAG] or NAME:TAG   a model pulled into the local Ollama store, read from its
                              blob without the Ollama server ($OLLAMA_MODELS or ~/.ollama/models)
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wrapper.core import manifest
from wrapper.core.errors import FtwError
from wrapper.core.ollama_store import ollama_blob
from wrapper.core.paths import display_path
from wrapper.runtime.models import load_llama

TEACHER_FORMS = (
    "an endpoint URL (http://127.0.0.1:11434/v1 for Ollama, with --teacher-model), a .gguf file, "
    "run:NAME (an earlier ftw run's GGUF) or ollama:NAME:TAG (a model in the local Ollama store)"
)
CONNECT_RETRIES = 4  # a teacher that is starting or briefly busy: 1, 2, 4, 8 s apart
GGUF_CONTEXT = 8192


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated: bool  # stopped by max_tokens: the JSON is cut off


class Teacher(Protocol):
    id: str  # what the rows and synth.json record: "endpoint URL model", "gguf NAME sha256:..."
    where: str  # the URL or file, for messages
    parallel_ok: bool

    def complete(self, messages: list[dict], schema: dict, max_tokens: int, temperature: float, seed: int) -> Reply: ...


# How servers take a JSON schema, tried in this order: OpenAI's own form (Ollama, LM Studio, vLLM,
# llama.cpp's server), llama-cpp-python's server's form, then none (the reply is parsed and retried).
STRUCTURED_FORMS = (
    lambda schema: {"type": "json_schema", "json_schema": {"name": "rows", "schema": schema, "strict": True}},
    lambda schema: {"type": "json_object", "schema": schema},
    None,
)


class TeacherDown(FtwError):
    """The teacher can't be reached or refused to answer: stop; the re-run resumes. Exit code 1,
    as for a failed child process."""

    exit_code = 1


# ---- an OpenAI-compatible endpoint ---------------------------------------------------------


class EndpointTeacher:
    parallel_ok = True

    def __init__(self, url: str, model: str | None):
        from openai import OpenAI

        self.where = url
        # The key is read from the environment, never from ftw's files or logs; local servers take any.
        self.client = OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY") or "none", max_retries=0)
        self.model = model or self._only_model()
        self.id = f"endpoint {url} model {self.model}"
        self.form = 0  # index into STRUCTURED_FORMS: the first this server accepts
        self.form_known = False
        self.probing = threading.Lock()

    def _call(self, what, *args, retry_server_errors: bool = True, **kwargs):
        """`what(...)` with retries and backoff while the server is unreachable or busy."""
        import openai

        for attempt in range(CONNECT_RETRIES + 1):
            try:
                return what(*args, **kwargs)
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError) as exc:
                if attempt == CONNECT_RETRIES:
                    raise TeacherDown(
                        f"the teacher at {self.where} is not answering ({type(exc).__name__}: {_one_line(exc)}). "
                        "Start it (for Ollama: ollama serve), then re-run the same command: it resumes."
                    ) from None
            except openai.InternalServerError as exc:
                if not retry_server_errors:
                    raise
                if attempt == CONNECT_RETRIES:
                    raise TeacherDown(f"the teacher at {self.where} keeps failing: {_one_line(exc)}") from None
            time.sleep(2**attempt)
        raise AssertionError("unreachable")

    def _only_model(self) -> str:
        import openai

        try:
            names = [m.id for m in self._call(self.client.models.list).data]
        except openai.APIStatusError as exc:
            raise TeacherDown(f"the teacher at {self.where} did not list its models: {_one_line(exc)}") from None
        if len(names) == 1:
            return names[0]
        raise FtwError(
            f"the teacher at {self.where} serves {len(names)} models ({', '.join(names[:8]) or 'none'}): "
            "name one with --teacher-model"
        )

    def complete(self, messages, schema, max_tokens, temperature, seed) -> Reply:
        request = dict(model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
        if not self.form_known:
            with self.probing:  # the first request finds the form; the others wait for it
                if not self.form_known:
                    return self._reply(self._probe(request, schema))
        return self._reply(self._send(request, STRUCTURED_FORMS[self.form], schema))

    def _probe(self, request: dict, schema: dict):
        import openai

        while True:
            form = STRUCTURED_FORMS[self.form]
            try:
                response = self._send(request, form, schema, retry_server_errors=form is None)
                self.form_known = True
                return response
            except (openai.BadRequestError, openai.UnprocessableEntityError, openai.InternalServerError) as exc:
                if form is None:
                    raise TeacherDown(f"the teacher at {self.where} refused the request: {_one_line(exc)}") from None
                self.form += 1  # this server takes structured output in another form, or not at all

    def _send(self, request: dict, form, schema: dict, retry_server_errors: bool = True):
        import openai

        request = {**request, **({"response_format": form(schema)} if form else {})}
        try:
            return self._call(self.client.chat.completions.create, retry_server_errors=retry_server_errors, **request)
        except openai.APIStatusError as exc:
            if not self.form_known:
                raise
            raise TeacherDown(f"the teacher at {self.where} refused the request: {_one_line(exc)}") from None

    def _reply(self, response) -> Reply:
        choice = response.choices[0]
        usage = response.usage
        return Reply(
            text=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            truncated=choice.finish_reason == "length",
        )


# ---- a GGUF file in this process -------------------------------------------------------------


class GgufTeacher:
    parallel_ok = False  # one llama.cpp context: requests run one at a time

    def __init__(self, path: Path, label: str):
        self.where = display_path(path)
        self.id = f"gguf {label} size {path.stat().st_size}"
        self.lock = threading.Lock()
        try:
            self.llm = load_llama(path, n_ctx=GGUF_CONTEXT)  # seeded per request in complete()
        except (ValueError, RuntimeError) as exc:
            raise FtwError(f"{self.where}: llama.cpp can't load this GGUF ({_one_line(exc)})") from None
        self.grammars: dict[str, Any] = {}

    def _grammar(self, schema: dict):
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self.grammars:
            self.grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self.grammars[key]

    def complete(self, messages, schema, max_tokens, temperature, seed) -> Reply:
        with self.lock:
            # No prompt-prefix reuse from the previous request: a chunk then gets the same reply
            # whatever was asked before it, so a resumed run repeats an uninterrupted one exactly.
            self.llm.reset()
            self.llm.set_seed(seed)
            result = self.llm.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                grammar=self._grammar(schema),
            )
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Reply(
            text=choice["message"]["content"] or "",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            truncated=choice.get("finish_reason") == "length",
        )


# ---- where a teacher's GGUF is ----------------------------------------------------------------


def run_gguf(run: str) -> Path:
    """The quantized GGUF of an earlier ftw run: the first of its quant artifacts that exists."""
    found = manifest.quantized_ggufs(manifest.run_dir_of(run))
    if found:
        return next(iter(found.values()))
    raise FtwError(f"run {run} has no quantized GGUF yet: make it first (ftw gguf --run {run})")


def open_teacher(spec: str, model: str | None) -> Teacher:
    if spec.startswith(("http://", "https://")):
        return EndpointTeacher(spec.rstrip("/"), model)
    if spec.startswith("run:"):
        path = run_gguf(spec[4:])
        return GgufTeacher(path, f"run {spec[4:]} {path.name}")
    path = Path(spec).expanduser()
    if path.is_file():
        return GgufTeacher(path.resolve(), path.name)
    if spec.startswith("ollama:") or (":" in spec and "/" not in spec.split(":")[0] and not path.suffix):
        name = spec.removeprefix("ollama:")
        blob = ollama_blob(name)
        return GgufTeacher(blob, f"ollama {name} {blob.name[:19]}")
    raise FtwError(f"--teacher {spec!r}: no such file; the teacher is {TEACHER_FORMS}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
