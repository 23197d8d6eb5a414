"""A recording HTTP receiver on 127.0.0.1 for notification tests: Slack and generic webhooks, the
Statuspage API's incident and component endpoints, the GitHub issues API. It can fail the next N
requests, answer one status to everything, or hang."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["API_KEY", "COMPONENT", "PAGE", "Receiver", "Request", "running_receiver"]

API_KEY = "statuspage-canary-key-88e3"
PAGE, COMPONENT = "page42", "comp7"


@dataclass
class Request:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Receiver(ThreadingHTTPServer):
    """Records every request; can fail the next N with a status, answer 4xx, or hang."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Request] = []
        self.fail_next, self.fail_status, self.retry_after = 0, 500, ""
        self.status: int | None = None  # every answer gets this status (e.g. 404)
        self.hang = False
        self.release = threading.Event()
        self.incidents: dict[str, dict[str, Any]] = {}
        self.components: dict[str, str] = {COMPONENT: "operational"}

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        srv = self.server
        srv.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                    json.loads(raw) if raw else None))
        if srv.hang:
            srv.release.wait(10)
            return
        if srv.fail_next > 0:
            srv.fail_next -= 1
            extra = {"Retry-After": srv.retry_after} if srv.retry_after else {}
            return self._answer(srv.fail_status, "text/plain", b"upstream trouble", extra)
        if srv.status is not None:
            return self._answer(srv.status, "text/plain", b"no_service")
        if self.path.startswith("/pages/"):
            return self._statuspage()
        if self.path.startswith("/repos/") and self.path.endswith("/issues"):
            number = len(srv.requests)
            return self._json(201, {"number": number, "html_url": f"{srv.url}/issues/{number}"})
        self._answer(200, "text/plain", b"ok")

    def _statuspage(self) -> None:
        srv, body, parts = self.server, self.server.requests[-1].body, self.path.strip("/").split("/")
        if self.headers.get("Authorization") != f"OAuth {API_KEY}":
            return self._json(401, {"error": "Could not authenticate"})
        if parts[:1] != ["pages"] or parts[1] != PAGE:
            return self._json(404, {"error": "page not found"})
        if self.command == "POST" and parts[2:] == ["incidents"]:
            incident_id = f"inc{len(srv.incidents) + 1}"
            srv.incidents[incident_id] = {"id": incident_id, **body["incident"]}
            srv.components.update(body["incident"].get("components", {}))
            return self._json(201, srv.incidents[incident_id])
        if self.command == "PATCH" and parts[2] == "incidents" and parts[3] in srv.incidents:
            srv.incidents[parts[3]].update(body["incident"])
            srv.components.update(body["incident"].get("components", {}))
            return self._json(200, srv.incidents[parts[3]])
        if self.command == "PATCH" and parts[2:] == ["components", COMPONENT]:
            srv.components[COMPONENT] = body["component"]["status"]
            return self._json(200, {"id": COMPONENT, "status": srv.components[COMPONENT]})
        self._json(404, {"error": "not found"})

    def _json(self, status: int, body: Any) -> None:
        self._answer(status, "application/json", json.dumps(body).encode())

    def _answer(self, status: int, ctype: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A Receiver serving in a thread until the block ends."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
