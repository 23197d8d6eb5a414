#!/usr/bin/env python3
"""Try every upgrade pair of the third-party test apps for real and report what the old version does
on the database the new version migrated.

    python tests/thirdparty/apps/try_apps.py [--pair NAME] [--json FILE] [--keep]

For each pair in catalog.PAIRS: start OLD on a fresh database, write a record, SIGTERM it (exit 0
expected); start NEW (it migrates), write, stop; start OLD again on the migrated database and report
whether it boots, its health, a read and a write, with its log lines. Exit 0 when every pair behaves
as the catalog says.

The venv holding both apps' requirements is created once and cached under $BACKOUT_THIRDPARTY_CACHE
(default ~/.cache/backout-thirdparty), keyed by a hash of requirements.txt and the Python version,
and file-locked, so parallel pytest workers share it. Tests can import ensure_venv() and AppProcess.
Processes are started as argv lists on 127.0.0.1 only, each in its own session, and always stopped.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

try:
    from . import catalog
except ImportError:  # run as a script
    import catalog

BOOT_TIMEOUT = 120.0  # seconds: the machine may be busy
STOP_TIMEOUT = 30.0
ERROR_LINE = r"\[ERROR\]|^[\w.]+(Error|Exception): "  # a logged error, or a traceback's last line
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def cache_root() -> Path:
    return Path(os.environ.get("BACKOUT_THIRDPARTY_CACHE") or Path.home() / ".cache" / "backout-thirdparty")


def ensure_venv(quiet: bool = True) -> Path:
    """The python of a venv holding requirements.txt (created once per requirements hash; locked)."""
    digest = hashlib.sha256(catalog.REQUIREMENTS_FILE.read_bytes())
    digest.update(f"{sys.version_info[:3]}".encode())
    key = digest.hexdigest()[:16]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"venv-{key}"
    python = venv / "bin" / "python"
    with open(root / f"venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits here until the first has finished
        if (venv / ".complete").exists() and python.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check",
               "-r", str(catalog.REQUIREMENTS_FILE)]
        subprocess.run(pip + (["--quiet"] if quiet else []), check=True)
        (venv / ".complete").write_text("\n".join(catalog.REQUIREMENTS) + "\n")
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: Any = None, timeout: float = 15.0) -> tuple[int | None, Any]:
    """(status, JSON or text); status None when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:200]


class AppProcess:
    """One app version serving `brain` on 127.0.0.1; its stdout+stderr go to `log_path`."""

    def __init__(self, version: catalog.AppVersion, python: Path, brain: Path, log_path: Path,
                 port: int | None = None):
        self.version, self.python, self.brain, self.log_path = version, python, brain, log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        return self.version.command(self.python, self.brain, self.port)

    def start(self) -> AppProcess:
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.version.environ(base), cwd=self.brain.parent,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> bool:
        """True once the health URL answers at all; False when the process exits first (or times out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            status, _ = http("GET", self.url + self.version.health_path, timeout=5.0)
            if status is not None:
                return True
            time.sleep(0.25)
        return False

    def request(self, req: catalog.Request) -> tuple[int | None, Any]:
        return http(req.method, self.url + req.path, req.body)

    def stop(self) -> int | None:
        """SIGTERM, wait; the exit code (SIGKILL to its process group and None if it hangs)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        """Cleanup after an error: this process's own group only."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []


def ledger_head(version: catalog.AppVersion, brain: Path) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{brain}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute(version.ledger_query).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return row[0] if row else None


def session(version: catalog.AppVersion, label: str, python: Path, brain: Path, workdir: Path,
            index: int) -> dict[str, Any]:
    """Start `version` on `brain`; if it boots: health, read, write, read; stop. The observations."""
    log_path = workdir / f"{index}-{version.app}-{version.version}.log"
    app = AppProcess(version, python, brain, log_path)
    out: dict[str, Any] = {"label": label, "version": version.key, "argv": app.argv, "log": str(log_path)}
    started = time.monotonic()
    try:
        app.start()
        out["booted"] = app.wait_booted()
        out["boot_seconds"] = round(time.monotonic() - started, 1)
        if out["booted"]:
            status, body = http("GET", app.url + version.health_path)
            out["health"] = {"status": status, "body": body}
            out["health_ok"] = status == 200 and isinstance(body, dict) and body.get("status") == "ok"
            status, body = app.request(version.read)
            out["read"] = {"status": status, "count": len(body["items"]) if status == 200 else None}
            out["read_ok"] = status == version.read.expect_status
            status, body = app.request(version.write)
            out["write"] = {"status": status, "body": body}
            out["write_ok"] = status == version.write.expect_status
            status, body = app.request(version.read)
            out["read_after_write"] = {"status": status, "count": len(body["items"]) if status == 200 else None}
        out["exit_code"] = app.stop()
    finally:
        app.kill()
    lines = app.log_lines()
    out["access_log"] = [line for line in lines if re.match(catalog.ACCESS_LOG_RE, line)]
    other = [line for line in lines if not re.match(catalog.ACCESS_LOG_RE, line)]
    out["error_lines"] = [line for line in other if re.search(ERROR_LINE, line)]
    out["last_lines"] = lines[-3:]  # as printed, access lines included
    out["tail"] = other[-4:]  # the server's and app's own last lines
    out["ledger_head"] = ledger_head(version, brain)
    return out


def check_pair(pair: catalog.UpgradePair, steps: list[dict[str, Any]]) -> list[str]:
    """What differs from the catalog's design (empty: as designed)."""
    problems = []
    for step, version in zip(steps[:2], (pair.old, pair.new)):
        for key in ("booted", "health_ok", "read_ok", "write_ok"):
            if not step.get(key):
                problems.append(f"{step['label']}: {key} is {step.get(key)}")
        if step.get("exit_code") != 0:
            problems.append(f"{step['label']}: exit code {step.get('exit_code')} on SIGTERM, expected 0")
        if step["ledger_head"] != version.schema_head:
            problems.append(f"{step['label']}: ledger head {step['ledger_head']}, expected {version.schema_head}")
    if steps[1]["read"]["count"] != 1:
        problems.append(f"new version read {steps[1]['read']['count']} rows before its write, expected 1 (old's)")
    expect, got = pair.old_on_migrated, steps[2]
    if got["booted"] != expect.boots:
        problems.append(f"old again: booted is {got['booted']}, expected {expect.boots}")
    if expect.boots:
        for key in ("health_ok", "read_ok", "write_ok"):
            if got.get(key) != getattr(expect, key):
                problems.append(f"old again: {key} is {got.get(key)}, expected {getattr(expect, key)}")
        if got.get("exit_code") != 0:
            problems.append(f"old again: exit code {got.get('exit_code')} on SIGTERM, expected 0")
    elif got.get("exit_code") != expect.exit_code:
        problems.append(f"old again: exit code {got.get('exit_code')}, expected {expect.exit_code}")
    text = "\n".join(Path(got["log"]).read_text(errors="replace").splitlines())
    for sign in expect.log_signs:
        if not re.search(sign, text):
            problems.append(f"old again: no log line matches {sign!r}")
    if expect.names_database_last_lines and not any(str(got["brain"]) in line for line in got["last_lines"][-3:]):
        problems.append("old again: its last log lines do not name the database")
    if got["ledger_head"] != pair.new.schema_head:
        problems.append(f"old again left ledger head {got['ledger_head']}, expected {pair.new.schema_head}")
    return problems


def run_pair(pair: catalog.UpgradePair, python: Path, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    brain = workdir / "brain.sqlite"
    steps = []
    for index, (version, label) in enumerate([(pair.old, "old on a fresh database"),
                                               (pair.new, "new (migrates)"),
                                               (pair.old, "old again on the migrated database")], 1):
        step = session(version, label, python, brain, workdir, index)
        step["brain"] = str(brain)
        steps.append(step)
    problems = check_pair(pair, steps)
    return {"pair": pair.name, "old": pair.old.key, "new": pair.new.key, "expected_layer": pair.expected_layer,
            "smoke_needed": pair.smoke_needed, "steps": steps, "as_designed": not problems, "problems": problems}


def _yes(value: Any) -> str:
    return {True: "yes", False: "NO", None: "-"}[value] if isinstance(value, (bool, type(None))) else str(value)


def report(result: dict[str, Any]) -> str:
    out = [f"== {result['pair']}: {result['old']} -> {result['new']}  "
           f"(expected rollback layer: {result['expected_layer']}, smoke needed: {_yes(result['smoke_needed'])})"]
    for step in result["steps"]:
        out.append(f"-- {step['label']}: {step['version']}")
        out.append("   $ " + " ".join(step["argv"]))
        if step["booted"]:
            out.append(f"   boots? yes ({step['boot_seconds']}s)  health? {step['health']['status']} "
                       f"{json.dumps(step['health']['body'])}")
            out.append(f"   read? {step['read']['status']} ({step['read']['count']} rows)  "
                       f"write? {step['write']['status']}  read after? {step['read_after_write']['count']} rows  "
                       f"exit on SIGTERM: {step['exit_code']}  ledger head: {step['ledger_head']}")
        else:
            out.append(f"   boots? NO: exited {step['exit_code']} after {step['boot_seconds']}s  "
                       f"ledger head: {step['ledger_head']}")
        out += ["   access: " + line for line in step["access_log"]]
        out += ["   error:  " + line for line in step["error_lines"] if line not in step["tail"]]
        out += ["   log:    " + line for line in step["tail"]]
    out.append("=> as designed" if result["as_designed"] else
               "=> NOT AS DESIGNED:\n" + "\n".join("   - " + p for p in result["problems"]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", action="append", choices=[p.name for p in catalog.PAIRS],
                        help="only this pair (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the observations here")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs (path printed)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    python = ensure_venv()
    print(f"venv: {python} ({time.monotonic() - started:.1f}s)", flush=True)
    workroot = Path(tempfile.mkdtemp(prefix="backout-try-apps-"))
    results = []
    try:
        for pair in catalog.PAIRS:
            if args.pair and pair.name not in args.pair:
                continue
            result = run_pair(pair, python, workroot / pair.name)
            results.append(result)
            print(report(result) + "\n", flush=True)
    finally:
        if args.keep:
            print(f"kept: {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    good = sum(r["as_designed"] for r in results)
    print(f"{good} passed, {len(results) - good} failed")
    return 0 if good == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
