"""A fake Graph API on loopback (real HTTP), for servers running in another process where respx cannot reach.

with GraphFake() as graph:
    env["GRAPH_API_BASE_URL"] = graph.url
    ...
    assert graph.sends() == [...]
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class GraphFake:
    """Answers POST /{version}/{phone_number_id}/messages like Meta, and records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(
                        {"path": self.path, "authorization": self.headers.get("Authorization"), "json": body}
                    )
                    count = len(fake.requests)
                if body.get("status") == "read":
                    answer: dict[str, Any] = {"success": True}
                else:
                    answer = {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                        "messages": [{"id": f"wamid.FAKEOUT{count}"}],
                    }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def sends(self) -> list[dict[str, Any]]:
        """The text messages sent, in order."""
        with self._lock:
            return [r for r in self.requests if r["json"].get("type") == "text"]

    def reads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["json"].get("status") == "read"]

    def __enter__(self) -> GraphFake:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
