"""Smoke run of the real third-party services in envs.SERVICES: upgrade, then the old version again.

For each deployment (default: all): build the OLD and NEW venvs, start OLD on a fresh SQLite
file, write a record through its HTTP API and read it back, stop it (SIGTERM), run the separate
migrate command when it has one (after first showing what NEW does on the unmigrated file, on a
copy), start NEW (which migrates at boot otherwise), write and read again, stop, then start OLD on
the migrated file and report whether it serves (image-layer rollback is enough) or not (the brain
has to be rolled back too). Everything listens on 127.0.0.1 only; every process started here is
stopped before the script ends.

    python tests/thirdparty/try_services.py [--keep] [--json OUT] [deployment ...]

Exit 0 when every deployment behaved as its `expected_layer` says, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import envs  # noqa: E402
from envs import HttpCall, ServiceSpec  # noqa: E402

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(spec: ServiceSpec, port: int, call: HttpCall, name: str = "", token: str = "",
         timeout: float = 10.0) -> tuple[int, str]:
    """(status, body text) of one request; status 0 when nothing answered."""
    method, path, data, headers = call.render(name, token)
    req = urllib.request.Request(spec.url(port, path), data=data, headers=headers, method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def call_ok(call: HttpCall, status: int, body: str, name: str, token: str) -> bool:
    return status in call.expect and call.expect_text.format(name=name, token=token) in body


def ledger(spec: ServiceSpec, brain: Path) -> str:
    try:
        con = sqlite3.connect(f"file:{brain}?mode=ro", uri=True)
        try:
            row = con.execute(spec.ledger_sql).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return f"<{exc}>"
    return "" if row is None else str(row[0])


@dataclass
class Instance:
    """One started process group and its log."""

    spec: ServiceSpec
    version: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    def log_tail(self, n: int = 8) -> list[str]:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in lines if line.strip()][-n:]

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # leftovers of the group (none expected)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.returncode


class Runner:
    def __init__(self, key: str, spec: ServiceSpec, root: Path) -> None:
        self.key, self.spec, self.root = key, spec, root
        self.brain = root / "brain.sqlite"
        self.state = root / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.token = spec.test_token or ""
        self.running: list[Instance] = []
        self.steps: list[dict[str, Any]] = []
        self.n = 0

    def say(self, text: str) -> None:
        print(f"[{self.key}] {text}", flush=True)

    def start(self, version: str, brain: Path | None = None, label: str = "") -> Instance:
        brain = brain or self.brain
        port = free_port()
        self.n += 1
        log = self.root / f"{self.n:02d}-{version}{label}.log"
        self.spec.write_config(version, brain=brain, port=port, state=self.state)
        argv = self.spec.argv(version, brain=brain, port=port, state=self.state)
        env = self.spec.environ(version, brain=brain, port=port, state=self.state, token=self.token)
        out = log.open("wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=self.state, start_new_session=True)
        out.close()
        inst = Instance(self.spec, version, port, log, proc)
        self.running.append(inst)
        return inst

    def wait_healthy(self, inst: Instance) -> tuple[bool, float]:
        deadline = inst.started + self.spec.boot_seconds
        while time.monotonic() < deadline:
            status, body = http(self.spec, inst.port, self.spec.health, timeout=3)
            if call_ok(self.spec.health, status, body, "", ""):
                return True, time.monotonic() - inst.started
            if inst.proc.poll() is not None:
                return False, time.monotonic() - inst.started
            time.sleep(0.1)
        return False, time.monotonic() - inst.started

    def stop(self, inst: Instance) -> int | None:
        code = inst.stop()
        if inst in self.running:
            self.running.remove(inst)
        return code

    def write_read(self, inst: Instance, name: str, also_read: tuple[str, ...] = ()) -> bool:
        s = self.spec
        status, body = http(s, inst.port, s.write, name, self.token)
        ok = call_ok(s.write, status, body, name, self.token)
        self.say(f"  write {name}: HTTP {status} {'ok' if ok else 'FAILED ' + repr(body[:200])}")
        for other in (name,) + also_read:
            status, body = http(s, inst.port, s.read, other, self.token)
            rok = call_ok(s.read, status, body, other, self.token)
            self.say(f"  read {other}: HTTP {status} {'ok' if rok else 'FAILED ' + repr(body[:200])}")
            ok = ok and rok
        return ok

    def phase(self, version: str, label: str, writes: str, reads: tuple[str, ...] = (),
              brain: Path | None = None) -> dict[str, Any]:
        inst = self.start(version, brain, label)
        healthy, secs = self.wait_healthy(inst)
        step: dict[str, Any] = {"phase": label.strip("-") or version, "version": version,
                                   "healthy": healthy, "seconds_to_healthy_or_exit": round(secs, 1)}
        if healthy:
            running = ""
            if self.spec.version_call:
                _, running = http(self.spec, inst.port, self.spec.version_call)
            self.say(f"{version}{label}: healthy in {secs:.1f}s on port {inst.port} "
                     f"(version answer {running.strip()[:60]})")
            step["works"] = self.write_read(inst, writes, reads)
            code = self.stop(inst)
            self.say(f"  stopped with SIGTERM: exit {code}")
            step["stop_exit"] = code
        else:
            code = inst.proc.poll()
            if code is None:
                self.say(f"{version}{label}: NOT healthy after {secs:.1f}s (still running); stopping")
                code = self.stop(inst)
            else:
                self.running.remove(inst)
            self.say(f"{version}{label}: did not serve; exit {code} after {secs:.1f}s; last lines of log:")
            for line in inst.log_tail():
                self.say(f"    | {line[:220]}")
            step.update(works=False, exit=code, log_tail=inst.log_tail())
        step["ledger"] = ledger(self.spec, brain or self.brain)
        self.say(f"  ledger ({self.spec.ledger_sql}): {step['ledger']}")
        self.steps.append(step)
        return step

    def migrate(self, version: str) -> dict[str, Any]:
        port = free_port()
        argv = self.spec.migrate_argv(version, brain=self.brain, port=port, state=self.state)
        assert argv is not None
        self.spec.write_config(version, brain=self.brain, port=port, state=self.state)
        env = self.spec.environ(version, brain=self.brain, port=port, state=self.state, token=self.token)
        log = self.root / f"migrate-{version}.log"
        t0 = time.monotonic()
        with log.open("wb") as out:
            code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=self.state,
                                  timeout=600).returncode
        secs = time.monotonic() - t0
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-6:]
        self.say(f"migrate {version}: exit {code} in {secs:.1f}s: {' '.join(argv)[:160]}")
        for line in tail:
            self.say(f"    | {line[:220]}")
        step = {"phase": "migrate", "version": version, "exit": code, "seconds": round(secs, 1),
                "log_tail": tail, "ledger": ledger(self.spec, self.brain)}
        self.say(f"  ledger: {step['ledger']}")
        self.steps.append(step)
        return step

    def cleanup(self) -> None:
        for inst in list(self.running):
            self.stop(inst)


def run(key: str, spec: ServiceSpec, root: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    for version in (spec.old, spec.new):
        b0 = time.monotonic()
        envs.ensure_venv(spec.name, version)
        print(f"[{key}] venv {spec.name} {version}: ready in {time.monotonic() - b0:.1f}s "
              f"(built in {envs.build_seconds(spec.name, version)}s)", flush=True)
    r = Runner(key, spec, root)
    try:
        r.say(f"{spec.description}: {spec.old} -> {spec.new}, expected layer: {spec.expected_layer}")
        if spec.fresh_needs_migrate:
            r.migrate(spec.old)  # creates the tables of an empty database
        old1 = r.phase(spec.old, "-old-fresh", "old-1")
        if spec.migrate is not None:
            copy = root / "unmigrated-copy.sqlite"
            shutil.copyfile(r.brain, copy)
            r.phase(spec.new, "-new-unmigrated-copy", "new-0", brain=copy)
            r.migrate(spec.new)
        new1 = r.phase(spec.new, "-new", "new-1", ("old-1",))
        old2 = r.phase(spec.old, "-old-again", "old-2", ("old-1", "new-1"))
    finally:
        r.cleanup()
    observed = "image" if old2.get("healthy") and old2.get("works") else "brain"
    good = bool(old1.get("works") and new1.get("works")) and observed == spec.expected_layer
    r.say(f"RESULT: OLD on the migrated database -> {'serves' if observed == 'image' else 'does not serve'}"
          f" => {observed} layer (expected {spec.expected_layer}) {'OK' if good else 'MISMATCH'}"
          f"; {time.monotonic() - t0:.0f}s")
    return {"deployment": key, "service": spec.name, "old": spec.old, "new": spec.new,
            "expected_layer": spec.expected_layer, "observed_layer": observed, "ok": good,
            "steps": r.steps, "seconds": round(time.monotonic() - t0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deployments", nargs="*", help=f"default: all of {', '.join(envs.SERVICES)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, databases)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    keys = args.deployments or list(envs.SERVICES)
    unknown = [k for k in keys if k not in envs.SERVICES]
    if unknown:
        parser.error(f"unknown deployment(s) {unknown}; known: {list(envs.SERVICES)}")
    base = Path(tempfile.mkdtemp(prefix="backout-thirdparty-"))
    results = []
    try:
        for key in keys:
            root = base / key
            root.mkdir()
            results.append(run(key, envs.SERVICES[key], root))
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print("\nSUMMARY")
    print(f"{'deployment':15} {'old -> new':18} {'ledger old -> new':34} {'OLD again':28} layer")
    for res in results:
        steps = res["steps"]
        old1 = [s for s in steps if s["phase"] == "old-fresh"][0]
        last = steps[-1]
        new = [s for s in steps if s["phase"] == "new"][0]
        again = ("serves" if last.get("healthy") and last.get("works")
                 else f"exit {last.get('exit')}" if last.get("exit") is not None else "fails")
        pair = f"{res['old']} -> {res['new']}"
        print(f"{res['deployment']:15} {pair:18} "
              f"{str(old1['ledger']) + ' -> ' + str(new['ledger']):34} {again:28} "
              f"{res['observed_layer']} (expected {res['expected_layer']}) {'OK' if res['ok'] else 'MISMATCH'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    passed = sum(1 for r in results if r["ok"])
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
