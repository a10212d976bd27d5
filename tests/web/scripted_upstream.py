"""An OpenAI-compatible upstream that streams whatever answer a test scripts, chunk by chunk.

The mock upstream (``scripts.mock_upstream``) answers words from its own vocabulary; a test that
needs a particular answer (hostile Markdown, say) runs this one instead, in a thread of the test
process: ``POST /v1/chat/completions`` streams ``answer`` as SSE ``chat.completion.chunk``
events, ``chunk_size`` characters each (so that the page also renders every partial text),
then ``finish_reason: "stop"`` and ``[DONE]``; ``GET /v1/models`` lists one model. The request
bodies are kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    answer: str = "Hello."
    chunk_size: int = 7
    requests: list[dict[str, Any]] = field(default_factory=list)


def chunk_event(model: str, delta: dict[str, str], finish: str | None) -> bytes:
    event = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._json(200, {"object": "list", "data": [{"id": "gpt-4o-mini",
                                                            "object": "model"}]})
            else:
                self._json(404, {"error": {"message": "no such route"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._json(404, {"error": {"message": "no such route"}})
                return
            script.requests.append(body)
            model = str(body.get("model", ""))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # the body ends when the socket does
            self.end_headers()
            self.wfile.write(chunk_event(model, {"role": "assistant", "content": ""}, None))
            text, size = script.answer, max(1, script.chunk_size)
            for start in range(0, len(text), size):
                self.wfile.write(chunk_event(model, {"content": text[start:start + size]}, None))
                self.wfile.flush()
            self.wfile.write(chunk_event(model, {}, "stop") + b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


@contextmanager
def scripted_upstream(script: Script) -> Iterator[str]:
    """Serve ``script`` on a free port in a thread; the base URL (``http://127.0.0.1:N``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="scripted-upstream", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
