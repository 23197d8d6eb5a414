"""A replay server for the Compute Engine REST API: recorded exchanges served on 127.0.0.1.

Serves tests/recordings/gcp/<name>.json: each request must match the next recorded request (method,
path, and the query and body fields the recording names), and gets the recorded response; a request off
the recording gets a 500 and fails the test with a diff, and so does a recording not played to its end.
An exchange with `"repeat": true` answers every request like it until the first one that is not.

Names made from the clock of a backout subprocess (a snapshot `backout-engine-20250301-120000`) cannot
be recorded: a recording may declare `"variables": {"snapshot": "<regex>"}` and write `${snapshot}`
in requests and responses. The first request where it appears binds it to the actual value (which must
match the regex); later requests must carry the same value, and responses get it filled in.

The server runs in a thread of the test process, so the client may be in-process (the provider with
`endpoint=server.url`) or a `backout` subprocess (`endpoint_url = server.url` in backout.toml).
"""

from __future__ import annotations

import difflib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["RECORDINGS", "Replay", "replaying"]

RECORDINGS = Path(__file__).parent / "recordings" / "gcp"
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


class Replay(ThreadingHTTPServer):
    """Answers each request with the next recorded response; records mismatches with a diff."""

    def __init__(self, exchanges: list[dict[str, Any]], variables: dict[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _ReplayHandler)
        self.exchanges = exchanges
        self.variables = variables or {}  # name -> the regex its value must match
        self.bound: dict[str, str] = {}
        self.position = 0
        self.used: set[int] = set()
        self.events: list[str] = []  # "GET /path" for each request, "hook: ..." for each callback
        self.mismatches: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        """The endpoint to give the client."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, actual: dict[str, Any]) -> tuple[int, Any]:
        """The recorded response for this request, or a 500 and a recorded mismatch."""
        with self.lock:
            self.events.append(f"{actual['method']} {actual['path']}")
            while self.position < len(self.exchanges):
                entry = self.exchanges[self.position]
                expected = entry["request"]
                if self._matches(expected, actual):
                    self.used.add(self.position)
                    self.position += 0 if entry.get("repeat") else 1
                    return entry["response"]["status"], self._fill(entry["response"]["body"])
                if entry.get("repeat") and self.position in self.used:
                    self.position += 1  # a repeated answer ends at the first request that is not its own
                    continue
                self.mismatches.append(_diff(self.position, self._fill(expected), actual))
                return 500, {"error": {"code": 500, "message": "replay: request does not match the recording"}}
            self.mismatches.append(f"request after the end of the recording: {actual['method']} {actual['path']}")
            return 500, {"error": {"code": 500, "message": "replay: the recording has ended"}}

    def _matches(self, expected: dict[str, Any], actual: dict[str, Any]) -> bool:
        """Does the request match (placeholders bound or binding)? Binds the new ones when it does."""
        want = json.dumps(_expected_view(self._fill(expected)), sort_keys=True)
        got = json.dumps(_view(expected, actual), sort_keys=True)
        if not _PLACEHOLDER.search(want):
            return want == got
        seen: set[str] = set()

        def group(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in seen:
                return f"(?P={name})"
            seen.add(name)
            return f"(?P<{name}>{self.variables[name]})"

        pattern = "".join(group(m) if isinstance(m, re.Match) else re.escape(m) for m in _pieces(want))
        found = re.fullmatch(pattern, got)
        if found is None:
            return False
        self.bound.update(found.groupdict())
        return True

    def _fill(self, value: Any) -> Any:
        """A recorded value with the bound placeholders filled in (unbound ones left as they are)."""
        if isinstance(value, str):
            return _PLACEHOLDER.sub(lambda m: self.bound.get(m.group(1), m.group(0)), value)
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        return value

    def report(self) -> str:
        """Every mismatch, with its diff."""
        return "\n\n".join(self.mismatches)

    def assert_complete(self) -> None:
        """No mismatch, and every recorded request was made."""
        if self.mismatches:
            raise AssertionError(self.report())
        left = [i for i in range(self.position, len(self.exchanges))
                if not (self.exchanges[i].get("repeat") and i in self.used)]
        if left:
            raise AssertionError("recorded requests never made: " + ", ".join(
                f"#{i} {self.exchanges[i]['request']['method']} {self.exchanges[i]['request']['path']}"
                for i in left))


def _pieces(text: str) -> Iterator[str | re.Match[str]]:
    """The text split into literal parts and placeholder matches."""
    at = 0
    for match in _PLACEHOLDER.finditer(text):
        yield text[at:match.start()]
        yield match
        at = match.end()
    yield text[at:]


def _expected_view(expected: dict[str, Any]) -> dict[str, Any]:
    return {"method": expected["method"], "path": expected["path"], "query": expected.get("query", {}),
            "body": expected.get("body", {})}


def _view(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    """The actual request, cut to the fields the recording checks."""
    return {"method": actual["method"], "path": actual["path"],
            "query": {k: actual["query"].get(k) for k in expected.get("query", {})},
            "body": {k: (actual["body"] or {}).get(k) for k in expected.get("body", {})}}


def _diff(position: int, expected: dict[str, Any], actual: dict[str, Any]) -> str:
    want = json.dumps(_expected_view(expected), indent=2, sort_keys=True).splitlines()
    got = json.dumps(_view(expected, actual), indent=2, sort_keys=True).splitlines()
    lines = difflib.unified_diff(want, got, f"recorded request #{position}", "actual request", lineterm="")
    return "\n".join(lines)


class _ReplayHandler(BaseHTTPRequestHandler):
    server: Replay

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._replay()

    def do_POST(self) -> None:
        self._replay()

    def do_DELETE(self) -> None:
        self._replay()  # never recorded: backout deletes nothing, so this is always a mismatch

    def _replay(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(size) if size else b""
        url = urlsplit(self.path)
        actual = {"method": self.command, "path": url.path, "query": dict(parse_qsl(url.query)),
                  "body": json.loads(raw) if raw else None}
        status, body = self.server.answer(actual)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def replaying(name: str) -> Iterator[Replay]:
    """Serve tests/recordings/gcp/<name>.json on 127.0.0.1; at the end, all of it must have been played."""
    recording = json.loads((RECORDINGS / f"{name}.json").read_text(encoding="utf-8"))
    server = Replay(recording["exchanges"], recording.get("variables"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    except Exception as exc:
        if server.mismatches:
            raise AssertionError(server.report()) from exc
        raise
    finally:
        server.shutdown()
        server.server_close()
    server.assert_complete()
