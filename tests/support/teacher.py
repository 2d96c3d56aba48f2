"""A stand-in for an OpenAI-compatible endpoint on 127.0.0.1 (a teacher for synth, a judge for eval):
a subclass says what the model answers to the last message; `serving` starts it and gives its URL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubModel(BaseHTTPRequestHandler):
    """/v1/models lists `model`; /v1/chat/completions answers `answer(last message)`, or 500 when it is None."""

    model = "stub"

    def answer(self, prompt: str) -> str | None:
        raise NotImplementedError

    def do_GET(self):
        self.send_json({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = self.answer(request["messages"][-1]["content"])
        if content is None:
            self.send_error(500, "gone")
            return
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}
        completion = {"id": "x", "object": "chat.completion", "created": 0, "model": self.model}
        self.send_json(completion | {"choices": [choice], "usage": usage})

    def send_json(self, value: dict) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def serving(handler: type[StubModel]) -> Iterator[str]:
    """The endpoint's base URL (http://127.0.0.1:PORT/v1) while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
