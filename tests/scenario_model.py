"""Random operator scenarios: a deployment driven through the real `backout` CLI, the model the
test keeps of it (acknowledged turns, versions judged bad, what runs) and the invariant checks.

Used by tests/test_scenarios.py (Hypothesis state machines), tests/test_fault_sweep.py and
bench/soak.py. Every check returns a list of violations (empty when the invariant holds), so a
test asserts and the soak run counts."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from backout import errors
from engine.client import EngineClient
from engine_proc import DEFAULT_KEY
from rollback_setup import ENV, init_process, url_of

__all__ = ["BAD_BUILDS", "ComposeDeployment", "DOCUMENTED_EXITS", "GOOD", "RESTORE_POINTS", "ROLLBACK_POINTS", "UNKNOWN",
           "UPGRADE_POINTS", "VERSIONS", "Deployment", "Model", "Observation", "Ran", "Stats", "Traffic",
           "brain_violations", "burst", "episode_ids", "snapshot_violations"]

GOOD = ("2.3.0", "2.3.1", "2.4.0", "2.4.1")
BAD_BUILDS = ("2.4.0-errors", "2.4.0-latency", "2.4.0-health", "2.4.0-eval", "2.4.0-crash", "2.4.0-drain")
UNKNOWN = ("9.9.9",)
VERSIONS = GOOD + BAD_BUILDS + UNKNOWN
_ROLLBACK_STEPS = ("announce", "diagnostics", "drain", "restore", "start", "salvage", "verify", "freeze",
                   "notify", "postmortem", "record")
_RESTORE_STEPS = ("stage", "checkpoint", "quarantine", "swap")
_UPGRADE_STEPS = ("baseline", "snapshot-online", "drain", "snapshot-final", "restore-point", "start", "evals",
                  "arm", "record")
RESTORE_POINTS = tuple(f"{w}:{s}" for s in _RESTORE_STEPS for w in ("before", "after")) + ("inside:swap",)
ROLLBACK_POINTS = tuple(f"{w}:{s}" for s in _ROLLBACK_STEPS for w in ("before", "after")) + (
    "inside:drain",) + RESTORE_POINTS
UPGRADE_POINTS = tuple(f"{w}:{s}" for s in _UPGRADE_STEPS for w in ("before", "after")) + ("inside:drain",)
# Every exit code backout documents (src/backout/errors.py holds the table the README shows).
DOCUMENTED_EXITS = frozenset(v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int))

SETTINGS = """
[deployments.{name}.upgrade]
watch = "2s"
check_every = "1s"
"""


@dataclass
class Ran:
    """One finished `backout` run: argv, exit code, output, how long it took, the fault injected."""

    argv: list[str]
    code: int
    out: str
    err: str
    seconds: float
    fault: str | None = None

    def doc(self) -> Any:
        """The JSON document printed on stdout (the last one when it streams JSON lines), or None."""
        text = self.out.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            pass
        events = self.events()
        return events[-1] if events else None

    def events(self) -> list[dict[str, Any]]:
        """JSON-lines events printed on stdout."""
        found = []
        for line in self.out.splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    def brief(self) -> str:
        """One line for a transcript."""
        last = (self.err.strip().splitlines() or [""])[-1][:240]
        fault = f" [BACKOUT_FAULT_AT={self.fault}]" if self.fault else ""
        return f"$ backout {' '.join(self.argv)}{fault} -> {self.code} ({self.seconds:.1f}s) {last}"


@dataclass
class Observation:
    """What `status --json`, `rollback --dry-run --json` and `snapshot list --json` said at one moment."""

    status: Ran
    dry_run: Ran
    listing: Ran

    @property
    def state(self) -> dict[str, Any]:
        """The parsed status document ({} when status failed)."""
        doc = self.status.doc()
        return doc if isinstance(doc, dict) else {}

    @property
    def running(self) -> str | None:
        """The version running, per status (None when nothing runs)."""
        running = self.state.get("running") or {}
        return running.get("version") if running.get("running") else None

    @property
    def healthy(self) -> bool:
        """True when status found the service healthy."""
        return bool((self.state.get("health") or {}).get("ok"))

    @property
    def serving(self) -> str | None:
        """The version that answers /health 200 (per the Engine's own health body), or None."""
        health = self.state.get("health") or {}
        body = health.get("body") if isinstance(health.get("body"), dict) else {}
        return body.get("version") if health.get("ok") else None

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Interrupted operations status lists."""
        return list(self.state.get("pending") or [])

    @property
    def judged_bad(self) -> set[str]:
        """Versions backout's ledger holds as bad (frozen or standing bad)."""
        bad = set(self.state.get("frozen") or [])
        bad |= {v["version"] for v in self.state.get("versions") or [] if v.get("standing") == "bad"}
        return bad


@dataclass
class Stats:
    """Counts for bench/RESULTS.md: scenarios, steps, crashes, faults, violations, paths covered."""

    scenarios: int = 0
    steps: int = 0
    crashes_injected: int = 0
    crashes_resumed: int = 0
    crashes_abandoned: int = 0
    faults_injected: int = 0
    violations: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    fault_points: Counter[str] = field(default_factory=Counter)
    violation_kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {"scenarios": self.scenarios, "steps": self.steps, "crashes_injected": self.crashes_injected,
                "crashes_resumed": self.crashes_resumed, "crashes_abandoned": self.crashes_abandoned,
                "faults_injected": self.faults_injected, "violations": self.violations,
                "distinct_paths": len(self.paths), "paths": dict(self.paths),
                "fault_points": dict(self.fault_points), "violation_kinds": dict(self.violation_kinds),
                "seconds": round(self.seconds, 1)}

    def save(self, path: Path) -> None:
        """Add these counts to the JSON file at `path` (created when missing)."""
        old = json.loads(path.read_text()) if path.exists() else {}
        new = self.to_dict()
        for key, value in new.items():
            if isinstance(value, dict):
                merged = Counter(old.get(key) or {})
                merged.update(value)
                old[key] = dict(merged)
            elif key != "distinct_paths":
                old[key] = (old.get(key) or 0) + value
        old["distinct_paths"] = len(old.get("paths") or {})
        path.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


@dataclass
class Model:
    """What the test knows independently of backout: acknowledged turns, versions judged bad."""

    acked: set[str] = field(default_factory=set)
    bad: set[str] = field(default_factory=set)
    forced: set[str] = field(default_factory=set)
    transcript: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def named(self, name: str) -> bool:
        """True when some command's output named `name` (a quarantine or incident folder)."""
        return any(name in text for text in self.outputs)


class Deployment:
    """A process deployment of the reference Engine in a folder, driven through the `backout` CLI."""

    def __init__(self, folder: Path, extra: str = SETTINGS) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = init_process(folder, extra)
        text = self.config.read_text().replace('drain_timeout = "10s"', 'drain_timeout = "3s"')
        self.config.write_text(text.replace('boot_timeout = "60s"', 'boot_timeout = "10s"'))
        self.url = url_of(self.config)
        self.brain = folder / "brain.sqlite"
        self.state_dir = folder / ".backout"
        self.extra_env: dict[str, str] = {}

    def run(self, *args: str, fault: str | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> Ran:
        """Run `backout ARGS --config ...` in the deployment's folder; never raises on an exit code."""
        child = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")}
        child.update(ENV)
        child.update(self.extra_env)
        child.update(env or {})
        if fault:
            child["BACKOUT_FAULT_AT"] = fault
        argv = [*args, "--config", str(self.config)]
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-m", "backout", *argv], capture_output=True, text=True,
                                  env=child, cwd=self.folder, timeout=timeout, stdin=subprocess.DEVNULL)
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            code, out, err = -999, _text(exc.stdout), _text(exc.stderr) + f"\n(timed out after {timeout}s)"
        return Ran(list(args), code, out, err, time.monotonic() - started, fault)

    def run_printed(self, command: str, json_output: bool = False) -> Ran:
        """Run a command exactly as backout printed it (`backout ...`), confirming with --yes."""
        import shlex

        words = shlex.split(command)
        assert words and words[0] == "backout", command
        return self.run(*words[1:], "--yes", *(("--json",) if json_output else ()))

    def observe(self) -> Observation:
        """status, rollback --dry-run and snapshot list, run side by side (all read-only)."""
        jobs = [("status", "--json"), ("rollback", "--dry-run", "--json"), ("snapshot", "list", "--json")]
        results: list[Ran | None] = [None] * len(jobs)

        def work(i: int) -> None:
            results[i] = self.run(*jobs[i], timeout=120)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status, dry_run, listing = results
        assert status is not None and dry_run is not None and listing is not None
        return Observation(status, dry_run, listing)

    def quarantines(self) -> list[Path]:
        """Quarantine folders backout made."""
        root = self.state_dir / "quarantine"
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def salvage_folders(self) -> list[Path]:
        """Salvage bundles of incidents."""
        root = self.state_dir / "incidents"
        return sorted(p / "salvage" for p in root.iterdir() if (p / "salvage").is_dir()) if root.is_dir() else []

    def close(self) -> None:
        """Stop whatever runs (also a service a killed run left behind: the runtime still knows it)."""
        self.run("stop", "--yes", timeout=120)


class ComposeDeployment(Deployment):
    """The same, on the compose runtime: real Docker, the engine:<version> images, the brain on a volume."""

    def __init__(self, folder: Path, env: dict[str, str], extra: str = SETTINGS) -> None:
        from compose_setup import COMPOSE_SETTINGS, init_compose, make_project

        folder.mkdir(parents=True, exist_ok=True)
        project, port = make_project(folder)
        self.folder, self.extra_env = project, dict(env)
        self.config = init_compose(project, self.extra_env)
        text = self.config.read_text().replace(
            "[deployments.engine]\n", '[deployments.engine]\napi_key = { env = "ENGINE_API_KEY" }\n', 1)
        text = text.replace('drain_timeout = "10s"', 'drain_timeout = "3s"')
        text = text.replace('boot_timeout = "60s"', 'boot_timeout = "20s"')
        self.config.write_text(text + COMPOSE_SETTINGS + extra.format(name="engine"))
        self.url = f"http://127.0.0.1:{port}"
        brain = Path(self.config.read_text().split('brain = "', 1)[1].split('"', 1)[0])
        self.brain = brain if brain.is_absolute() else project / brain
        self.state_dir = project / ".backout"

    def close(self) -> None:
        """Stop the service and take the compose project (containers, volume) down."""
        from compose_setup import compose_down

        self.run("stop", "--yes", timeout=120)
        compose_down(self.folder, self.extra_env)




def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def burst(url: str, prefix: str, n: int) -> list[str]:
    """Send n turns one after another; the task ids the Engine acknowledged (completed stream)."""
    acked = []
    with EngineClient(url, DEFAULT_KEY, timeout=15) as client:
        for i in range(n):
            task = f"{prefix}-{i}"
            result = client.execute(task, f"Alice met Ben. Item {task} is packed.")
            if result.ok:
                acked.append(task)
    return acked


class Traffic:
    """Turns sent one after another from a thread while a command runs; the acknowledged ids."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.acked: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with EngineClient(self.url, DEFAULT_KEY, timeout=15) as client:
            while not self._stop.is_set():
                self.sent += 1
                task = f"{self.prefix}-{self.sent}"
                result = client.execute(task, f"Carlos met Dana. Item {task} is shipped.")
                if result.ok:
                    self.acked.append(task)
                else:
                    time.sleep(0.05)
                time.sleep(0.02)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


# -- reading brains --------------------------------------------------------------------------------

@contextmanager
def _read_copy(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a copy of a brain and its -wal (quarantines are never touched)."""
    with tempfile.TemporaryDirectory(prefix="scenario-read-") as tmp:
        copy = Path(tmp) / "brain.sqlite"
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        try:
            yield conn
        finally:
            conn.close()


def episode_ids(path: Path, copy: bool = False) -> set[str]:
    """task_id of every episode in a brain (read in place, or from a copy)."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    try:
        if copy:
            with _read_copy(path) as conn:
                return {r[0] for r in conn.execute("SELECT task_id FROM episodes")}
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return {r[0] for r in conn.execute("SELECT task_id FROM episodes")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return set()


def salvaged_ids(folder: Path) -> set[str]:
    """task_id of every episode row a salvage bundle holds."""
    found: set[str] = set()
    path = folder / "episodes.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                found.add(json.loads(line)["task_id"])
            except (ValueError, KeyError, TypeError):
                continue
    return found


def brain_violations(brain: Path) -> list[str]:
    """The live brain passes integrity_check and is still in WAL mode."""
    if not brain.exists():
        return []
    header = brain.open("rb").read(100)  # no SQLite connection of ours is open on it here
    if len(header) < 100:
        return [] if not header else [f"brain {brain} is truncated ({len(header)} bytes)"]
    found = []
    if header[18:20] != b"\x02\x02":
        found.append(f"brain {brain} left WAL mode (header version bytes {header[18]}/{header[19]})")
    try:
        conn = sqlite3.connect(f"file:{brain}?mode=ro", uri=True, timeout=10)
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        result = [f"{type(exc).__name__}: {exc}"]
    if result != ["ok"]:
        found.append(f"brain {brain} fails integrity_check: {result[:3]}")
    return found


def snapshot_violations(listing: Ran, folder: Path) -> list[str]:
    """Every listed snapshot is complete: data file present, size and sha256 as its manifest says, integrity ok."""
    import hashlib

    doc = listing.doc()
    if listing.code != 0 or not isinstance(doc, dict):
        return [f"`snapshot list --json` failed: {listing.brief()}"]
    found = []
    root = Path(doc.get("folder") or folder)
    for snap in doc.get("snapshots") or []:
        sid = snap["id"]
        data, manifest_path = root / f"{sid}.sqlite", root / f"{sid}.json"
        if not data.exists() or not manifest_path.exists():
            found.append(f"snapshot {sid} is listed but its data file or manifest is missing")
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            found.append(f"snapshot {sid} is listed with an unreadable manifest")
            continue
        blob = data.read_bytes()
        if manifest.get("size") is not None and len(blob) != manifest["size"]:
            found.append(f"snapshot {sid} is listed but is {len(blob)} bytes, manifest says {manifest['size']}")
        elif manifest.get("sha256") and hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
            found.append(f"snapshot {sid} is listed but its sha256 differs from its manifest")
        else:
            conn = sqlite3.connect(f"file:{data}?mode=ro&immutable=1", uri=True)
            try:
                ok = [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
            except sqlite3.DatabaseError:
                ok = False
            finally:
                conn.close()
            if not ok:
                found.append(f"snapshot {sid} is listed but fails integrity_check")
    return found


def exit_violations(ran: Ran) -> list[str]:
    """An exit code backout documents, no traceback, no death nobody asked for."""
    found = []
    if ran.code < 0 and not (ran.fault and ran.code == -9):
        found.append(f"`backout {' '.join(ran.argv)}` died ({ran.code}) with no fault injected")
    elif ran.code >= 0 and ran.code not in DOCUMENTED_EXITS:
        found.append(f"`backout {' '.join(ran.argv)}` exited {ran.code}, not a documented exit code")
    if "Traceback (most recent call last)" in ran.err:
        found.append(f"`backout {' '.join(ran.argv)}` printed a traceback: "
                     f"{ran.err.strip().splitlines()[-1][:200]}")
    return found
