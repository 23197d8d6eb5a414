"""A small service that takes its database path and ports from a YAML config file, not its command line.

    python yaml_service.py --release 1|2 --config service.yml [--no-migrate] [--migrate-only]

service.yml (read with ruamel.yaml):

    database: /path/to/app.sqlite
    listen: {host: 127.0.0.1, port: 8000}
    admin_port: 8001

Release 1 keeps `items (id, name)` at PRAGMA user_version 1 and refuses a newer database at boot: it
exits 3 with "database /path/to/app.sqlite is at schema 2, this release knows 1". Release 2 adds
`items.note` (user_version 2). GET /health, GET /items, POST /items {"name": ...}; GET /health on the
admin port too. With --no-migrate it does not migrate at boot and refuses (exit 4, "run the migrate step")
a database older than it knows, as services with a separate migrate command do; --migrate-only migrates
and exits. Release 2-errors is release 2 with a bug: every third request to /items answers 500 (a
failed POST writes nothing). One JSON-free access line per request on stdout, in the common log format with the
duration in microseconds at the end. SIGTERM: exit 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ruamel.yaml import YAML

SCHEMA = {"1": 1, "2": 2, "2-errors": 2}


def migrate(db: Path, release: str, apply: bool = True) -> None:
    conn = sqlite3.connect(db)
    have = conn.execute("PRAGMA user_version").fetchone()[0]
    knows = SCHEMA[release]
    if have > knows:
        print(f"database {db} is at schema {have}, this release knows {knows}", flush=True)
        sys.exit(3)
    if have < knows and not apply:
        print(f"database {db} is at schema {have}, this release needs {knows}: run the migrate step", flush=True)
        sys.exit(4)
    if have < 1:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.execute("PRAGMA user_version = 1")
    if have < 2 <= knows:
        conn.execute("ALTER TABLE items ADD COLUMN note TEXT")
        conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def handler(db: Path, release: str) -> type[BaseHTTPRequestHandler]:
    calls = iter(range(1 << 62))
    broken = release.endswith("-errors")

    class Handler(BaseHTTPRequestHandler):
        def _bug(self) -> bool:
            """Release 2-errors fails every third request to /items."""
            return broken and next(calls) % 3 == 2

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            started = time.monotonic()
            if self.path == "/health":
                self._send(200, {"status": "ok", "release": release, "database": str(db)})
            elif self.path == "/items" and self._bug():
                self._send(500, {"error": "internal error"})
            elif self.path == "/items":
                conn = sqlite3.connect(db)
                rows = conn.execute("SELECT id, name FROM items ORDER BY id").fetchall()
                conn.close()
                self._send(200, {"items": [{"id": i, "name": n} for i, n in rows]})
            else:
                self._send(404, {"error": "not found"})
            self._access(started)

        def do_POST(self) -> None:  # noqa: N802
            started = time.monotonic()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self._bug():
                self._send(500, {"error": "internal error"})
                self._access(started)
                return
            conn = sqlite3.connect(db)
            cur = conn.execute("INSERT INTO items (name) VALUES (?)", (str(body.get("name")),))
            conn.commit()
            conn.close()
            self._send(201, {"id": cur.lastrowid})
            self._access(started)

        def _access(self, started: float) -> None:
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
            micros = int((time.monotonic() - started) * 1e6)
            print(f'127.0.0.1 - - [{stamp}] "{self.command} {self.path} HTTP/1.1" {self.status} 0 "-" "-" {micros}', flush=True)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--release", required=True, choices=sorted(SCHEMA))
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--no-migrate", action="store_true")
    parser.add_argument("--migrate-only", action="store_true")
    args = parser.parse_args()
    settings = YAML(typ="safe").load(args.config.read_text())
    db = Path(settings["database"])
    print(f"release {args.release} starting on {db}", flush=True)
    migrate(db, args.release, apply=not args.no_migrate)
    if args.migrate_only:
        print(f"release {args.release} migrated {db}", flush=True)
        return 0
    app = ThreadingHTTPServer((settings["listen"]["host"], int(settings["listen"]["port"])), handler(db, args.release))
    admin = ThreadingHTTPServer(("127.0.0.1", int(settings["admin_port"])), handler(db, args.release))
    for server in (app, admin):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    app.shutdown()
    admin.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
