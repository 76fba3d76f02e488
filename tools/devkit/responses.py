"""Where CloudFormation's responses land: the pre-signed ResponseURL played in-process (Sent, the
sender the custom resource handler is configured with) or over HTTP (Receiver, which the real
sender PUTs to)."""

from __future__ import annotations

import copy
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Sent:
    """Stands in for the sender: records every response body; answers 200, or 403 for a URL
    CloudFormation did not sign when it knows which it signed (issued: the CloudFormation
    double's), as its bucket refuses a forged signature."""

    responses: list[dict[str, Any]] = field(default_factory=list)
    issued: set[str] | None = None

    def __call__(self, url: str, body: dict[str, Any], *_args: Any, **_kwargs: Any) -> int:
        self.responses.append(copy.deepcopy(body))
        return 200 if self.issued is None or url in self.issued else 403

    @property
    def last(self) -> dict[str, Any]:
        assert self.responses, "no response was sent"
        return self.responses[-1]


def free_port() -> int:
    """A port on 127.0.0.1 nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Receiver:
    """Collects the responses PUT to http://127.0.0.1:<port>/<RequestId>."""

    port: int = 0
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies[self.path.split("?")[0].strip("/")] = json.loads(self.rfile.read(length))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def url(self, request_id: str) -> str:
        """The ResponseURL of a request: pre-signed in AWS, so it carries a query string."""
        return f"http://127.0.0.1:{self.port}/{request_id}?X-Amz-Signature=not-a-real-signature"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
