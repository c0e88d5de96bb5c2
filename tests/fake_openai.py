"""A local stand-in for the OpenAI chat-completions endpoint (127.0.0.1, a thread), for tests.

``FakeOpenAI.statuses`` scripts the HTTP status of the next requests (then 200 forever); a
failure asks the client to retry after ``retry_after_ms`` milliseconds (``retry-after-ms``, as the
real API does), so retries are quick.  ``requests`` records each request's JSON body,
``Authorization`` header and the client's retry count (``x-stainless-retry-count``).
``delay_s`` holds every answer back that long; ``max_in_flight`` is the most requests the server
was handling at once (concurrency tests).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """``with FakeOpenAI() as server:`` serves ``server.base_url`` until the block ends."""

    def __init__(self, statuses: list[int] | None = None, retry_after_ms: int = 10,
                 delay_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.retry_after_ms = retry_after_ms
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, body: dict[str, Any], auth: str,
               retry_count: str | None = None) -> tuple[int, dict[str, Any]]:
        """Status and JSON reply of one request (records it)."""
        with self.lock:
            self.requests.append({"body": body, "auth": auth, "retry_count": retry_count})
            status = self.statuses.pop(0) if self.statuses else 200
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            self.in_flight -= 1
        if status != 200:
            return status, {"error": {"message": f"fake failure {status}", "type": "fake",
                                      "code": str(status)}}
        last = body["messages"][-1]["content"]
        return 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"echo: {last}"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


def _handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            status, reply = server.answer(body, self.headers.get("Authorization", ""),
                                          self.headers.get("x-stainless-retry-count"))
            data = json.dumps(reply).encode()
            self.send_response(status)
            if status != 200:
                self.send_header("retry-after-ms", str(server.retry_after_ms))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
