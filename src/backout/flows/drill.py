"""The rollback drill: bring staging up on the production version, upgrade it to a broken build on
purpose, let backout detect and roll back, check that nothing was lost, and time every phase.

backout itself is driven as an operator drives it: `backout switch`, `backout upgrade --json`
(whose watch window detects the failure and rolls back), `backout salvage replay`, as child
processes, while traffic runs the whole time. `BACKOUT_FAULT_AT` reaches the upgrade (and its
rollback) only, so a drill can rehearse a rollback that fails and end red, saying where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from backout.brain.manifest import SnapshotStore
from backout.brain.tables import connect_readonly, quote_ident
from backout.flows.check import base_url
from backout.flows.drill_setup import Rehearsal, Staging
from backout.flows.drill_traffic import EngineTraffic, RequestTraffic, Traffic, burst
from backout.flows.paths import rollback_journal
from backout.report.drill import duration_text

__all__ = ["Drill"]

SEED_TURNS = 160  # a few minutes' worth of a staging service's turns, sent quickly
SEED_REQUESTS = 60  # the same for a service driven by its [drill] requests


def _iso_epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


class Drill:
    """One drill on one staging deployment; `run()` returns the result the report renders."""

    def __init__(self, staging: Staging, break_mode: str, plan: Rehearsal,
                 on_phase: Callable[[dict[str, Any]], None] | None = None, watch_s: float = 45) -> None:
        self.staging = staging
        self.target = staging.target
        self.settings = self.target.require_settings()
        self.mode = break_mode
        self.plan = plan
        self.broken, self.expected = plan.broken, plan.expected
        self.production = plan.production
        self.on_phase = on_phase
        self.watch_s = watch_s
        self.phases: list[dict[str, Any]] = []
        self.marks: dict[str, float | None] = {"switch": None, "detect": None, "recovered": None}
        self.returned: float | None = None  # when the command that rolled back (upgrade or rollback) exited
        # Stretches when neither version served: drain of the old one to the new one healthy, both ways.
        self.switch_overs: list[dict[str, Any]] = []
        self.upgrade_launched: float | None = None
        self.events: list[dict[str, Any]] = []
        self.traffic: Traffic | None = None
        self.failure: dict[str, Any] | None = None
        self.started = time.time()

    # -- running backout -----------------------------------------------------------------------

    def _env(self, fault: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if fault or k != "BACKOUT_FAULT_AT"}
        return {**env, **self.staging.env}

    def backout(self, *args: str, fault: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a backout command on the staging deployment."""
        argv = [sys.executable, "-m", "backout", *args, "--config", str(self.staging.config),
                "--deployment", self.target.deployment]
        return subprocess.run(argv, capture_output=True, text=True, env=self._env(fault), timeout=timeout)

    @contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[dict[str, Any]]:
        """Time a phase the drill runs itself."""
        entry: dict[str, Any] = {"name": name, "start": time.time(), "seconds": 0.0, "detail": detail}
        try:
            yield entry
        finally:
            entry["seconds"] = round(time.time() - float(entry["start"]), 3)
            self.add_phase(entry)

    def add_phase(self, entry: dict[str, Any]) -> None:
        """Record a phase (timed here, or taken from a journal's timeline)."""
        self.phases.append(entry)
        if self.on_phase:
            self.on_phase(entry)

    # -- the phases ----------------------------------------------------------------------------

    def bring_up(self) -> None:
        """Staging on the production version, healthy."""
        with self.phase("bring-up", f"{self.target.deployment} on {self.production}") as p:
            current = self.backout("status", "--json")
            running = json.loads(current.stdout).get("running", {}) if current.returncode == 0 else {}
            if not (running.get("running") and running.get("version") == self.production):
                out = self.backout("switch", self.production, "--yes", "--json")
                if out.returncode != 0:
                    raise DrillFailed("bring-up", f"{self.production} did not start: {_last(out)}")
            p["detail"] += f", health {self.target.probe().reason()}"

    def seed(self) -> None:
        """Rows for the drill to protect (for the Engine: people, facts, episodes, feedback), then traffic for the
        rest of the drill: the Engine's turns, the deployment's [drill] requests, or none (said so)."""
        rate = self.settings.drill.traffic_rate
        if self.plan.traffic == "none":
            self.add_phase({"name": "seed", "start": time.time(), "seconds": 0.0,
                            "detail": "no traffic: this deployment names no [drill] requests, so detection relies on "
                                      "health and evals, and the rows checked are those already in the brain"})
            return
        if self.plan.traffic == "engine":
            key = self.staging.env.get("ENGINE_API_KEY", os.environ.get("ENGINE_API_KEY", ""))
            with self.phase("seed") as p:
                done = burst(base_url(self.target), key, SEED_TURNS)
                p["detail"] = f"{done}/{SEED_TURNS} turns"
            self.traffic = EngineTraffic(base_url(self.target), key, rate).start()
        else:
            requests, headers = self.settings.drill.requests, self.target.api_headers()
            with self.phase("seed") as p:
                done = RequestTraffic(base_url(self.target), headers, requests, rate).burst(SEED_REQUESTS)
                p["detail"] = f"{done}/{SEED_REQUESTS} requests accepted"
            self.traffic = RequestTraffic(base_url(self.target), headers, requests, rate).start()
        with self.phase("baseline", "traffic while the production version serves"):
            need = self.settings.verdict.min_requests
            deadline = time.time() + 60
            while len(self.traffic.turns) < need + 5 and time.time() < deadline:
                time.sleep(0.25)

    def upgrade_and_rollback(self) -> dict[str, Any] | None:
        """`backout upgrade BROKEN`: its watch window detects the failure and rolls back."""
        # A drill upgrades to a broken build on purpose: --force takes it past the proof before the stop (a build
        # that dies at boot is refused there) and past the judgement an earlier drill left on this staging.
        argv = [sys.executable, "-m", "backout", "upgrade", self.broken, "--yes", "--json", "--watch",
                f"{self.watch_s:g}s", "--config", str(self.staging.config), "--deployment", self.target.deployment,
                "--force"]
        self.upgrade_launched = time.time()
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=self._env(fault=True))
        watchdog = threading.Timer(self.watch_s + 600, child.kill)  # a hung upgrade must not hang the drill
        watchdog.start()
        try:
            assert child.stdout is not None
            for line in child.stdout:
                if line.startswith("{"):
                    self._event(json.loads(line))
            code = child.wait()
            self.returned = time.time()
            stderr = child.stderr.read() if child.stderr else ""
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
        return self._upgrade_outcome(code, stderr)

    def _event(self, event: dict[str, Any]) -> None:
        event["seen_at"] = time.time()
        self.events.append(event)
        if event["event"] == "upgraded":
            self.marks["switch"] = _iso_epoch(next((e["finished_at"] for e in reversed(self.events)
                                                    if e.get("step") == "start"), None))
        elif event["event"] in ("rollback", "upgrade-failed") and self.marks["detect"] is None:
            self.marks["detect"] = event["seen_at"]
            if self.marks["switch"] is None:  # never healthy: the switch is when the new version started
                start = next((e for e in self.events if e.get("step") == "drain"), None)
                self.marks["switch"] = _iso_epoch(start["finished_at"]) if start else event["seen_at"]

    def _upgrade_outcome(self, code: int, stderr: str) -> dict[str, Any] | None:
        last = self.events[-1] if self.events else {}
        rollback = last.get("rollback") if last.get("event") in ("result", "upgrade-failed") else None
        if code < 0:
            raise DrillFailed(self._where_killed(), f"backout was killed (signal {-code}) in the middle of it")
        if last.get("event") == "result" and last.get("outcome") == "promoted":
            return None  # nothing detected: for the drain build the drill rolls back by hand
        if rollback is None:
            raise DrillFailed("upgrade", f"the upgrade ended without a rollback (exit {code}): "
                                         f"{stderr.strip().splitlines()[-1] if stderr.strip() else last}")
        return dict(rollback)

    def _where_killed(self) -> str:
        steps = [e["step"] for e in self.events if e.get("event") == "step"]
        rollback_steps = [e["step"] for e in self.events if e.get("event") == "rollback-step"]
        if rollback_journal(self.target).exists():
            done = json.loads(rollback_journal(self.target).read_text()).get("done", [])
            return f"rollback, after step {done[-1] if done else '(none)'}; its journal is pending"
        if rollback_steps:
            return f"rollback, after step {rollback_steps[-1]}"
        return f"upgrade, after step {steps[-1] if steps else '(none)'}"

    def manual_rollback(self) -> dict[str, Any]:
        """The drain build serves normally: the drill rolls it back as an operator would."""
        self.marks["detect"] = time.time()
        out = self.backout("rollback", "--yes", "--json", "--reason", f"drill: roll back {self.broken}", fault=True)
        self.returned = time.time()
        if out.returncode < 0:
            raise DrillFailed(self._where_killed(), f"backout was killed (signal {-out.returncode})")
        if not out.stdout.strip():
            raise DrillFailed("rollback", _last(out))
        return dict(json.loads(out.stdout)["result"])

    def rollback_phases(self, rollback: dict[str, Any]) -> None:
        """decide, drain, restore, start, salvage, verify, notify: from the rollback's own timeline, each from the
        start of its first step to the end of its last, so that they follow one another without a gap."""
        incident = json.loads((Path(rollback["incident_folder"]) / "incident.json").read_text())
        steps = {e["step"]: e for e in incident["timeline"] if e["outcome"] == "ok"}
        first = min((_iso_epoch(e["started_at"]) or 0) for e in steps.values())
        detected = self.marks["detect"] or first
        told = [what for step, what in (("announce", "incident announced"), ("diagnostics", "diagnostics captured"))
                if step in steps]
        decided = max([_iso_epoch(steps[p]["finished_at"]) or first for p in ("announce", "diagnostics")
                       if p in steps] or [first])
        self.add_phase({"name": "decide", "start": detected, "seconds": round(max(0.0, decided - detected), 3),
                        "detail": f"{rollback['layer']} layer: {rollback['layer_reason']}"
                                  + (f"; {', '.join(told)}" if told else "")})
        for name, parts in (("drain", ["drain"]), ("restore", ["restore"]), ("start", ["start"]),
                            ("salvage", ["salvage"]), ("verify", ["verify"]),
                            ("notify", ["freeze", "notify", "postmortem", "record"])):
            present = [steps[p] for p in parts if p in steps]
            if present:
                begun = _iso_epoch(present[0]["started_at"]) or first
                ended = max(_iso_epoch(e["finished_at"]) or begun for e in present)
                if name == "notify" and self.returned:  # the command's own exit belongs to its last phase
                    ended = max(ended, self.returned)
                self.add_phase({"name": name, "start": begun, "seconds": round(max(0.0, ended - begun), 3),
                                "detail": "; ".join(e["detail"] for e in present if e["detail"])})
        verify = steps.get("verify")
        self.marks["recovered"] = _iso_epoch(verify["finished_at"]) if verify else None
        drain, start = steps.get("drain"), steps.get("start")
        if drain and start:
            self.switch_overs.append({"from": _iso_epoch(drain["started_at"]), "to": _iso_epoch(start["finished_at"]),
                                      "what": f"{self.broken} -> {self.production}"})

    def upgrade_phases(self) -> None:
        """pre-flight, snapshot and upgrade, from the upgrade's step events; detect from the marks."""
        steps = {e["step"]: e for e in self.events if e.get("event") == "step"}
        later = [_iso_epoch(e["started_at"]) for name, e in steps.items() if name != "baseline"]
        if self.upgrade_launched is not None and later:
            begun = min(t for t in later if t is not None)
            base = steps.get("baseline")
            self.add_phase({"name": "pre-flight", "start": self.upgrade_launched,
                            "seconds": round(max(0.0, begun - self.upgrade_launched), 3),
                            "detail": f"backout upgrade {self.broken}: pre-flight checks"
                                      + (f", then the baseline of {self.production} ({base['detail']}, "
                                         f"{duration_text(base['seconds'])})" if base else "")})
        groups = (("snapshot", ["snapshot-online", "snapshot-final", "restore-point"]),
                  ("upgrade", ["drain", "start", "evals", "arm", "record"]))
        for name, parts in groups:
            present = [steps[p] for p in parts if p in steps]
            if present:
                self.add_phase({"name": name, "start": _iso_epoch(present[0]["started_at"]),
                                "seconds": round(sum(e["seconds"] for e in present), 3),
                                "detail": ", ".join(f"{e['step']} {duration_text(e['seconds'])}" for e in present)})
        if self.marks["switch"] and self.marks["detect"]:
            self.add_phase({"name": "detect", "start": self.marks["switch"],
                            "seconds": round(self.marks["detect"] - self.marks["switch"], 3),
                            "detail": self._trigger_text()})
        drain = steps.get("drain")
        if drain and self.marks["switch"]:
            self.switch_overs.append({"from": _iso_epoch(drain["started_at"]), "to": self.marks["switch"],
                                      "what": f"{self.production} -> {self.broken}"})

    def _trigger_text(self) -> str:
        decided = next((e for e in self.events if e["event"] == "rollback"), None)
        if decided:
            return f"roll-back verdict: {decided['verdict']['reason']}"
        failed = next((e for e in self.events if e["event"] == "upgrade-failed"), None)
        return f"before it was healthy: {failed['why']}" if failed else "by the drill (the verdict cannot see it)"

    def signals(self) -> list[dict[str, Any]]:
        """The evidence of the roll-back verdict, one row per signal (what it read and whether it triggered)."""
        decided = next((e for e in self.events if e["event"] == "rollback"), None)
        return list(decided["verdict"].get("evidence") or []) if decided else []

    def triggers(self, rollback: dict[str, Any]) -> list[str]:
        """Which signals called for the rollback, in the words of BREAKS."""
        decided = next((e for e in self.events if e["event"] == "rollback"), None)
        if decided:
            return list(decided["verdict"]["triggers"])
        if any(e["event"] == "upgrade-failed" for e in self.events):
            return ["not healthy at start"]
        drain = rollback.get("drain") or {}
        return ["forced stop at the drain"] if drain and not drain.get("clean") else ["none"]


class DrillFailed(Exception):
    """The drill cannot go on; where and why."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


def _last(out: subprocess.CompletedProcess[str]) -> str:
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {out.returncode}"


def rows_kept(brain: Path, store: SnapshotStore, snapshot_id: str) -> dict[str, tuple[int, int]]:
    """Per table of the restore point: (rows it had, of those still in the brain), by rowid."""
    manifest = store.load(snapshot_id)
    conn = connect_readonly(brain)
    try:
        out = {}
        for table, mark in manifest.tables.items():
            high = mark.get("max_rowid")
            if high is None:
                out[table] = (int(mark.get("rows") or 0), int(mark.get("rows") or 0))
                continue
            kept = conn.execute(f"SELECT count(*) FROM {quote_ident(table)} WHERE rowid <= ?", (high,)).fetchone()[0]
            out[table] = (int(mark["rows"] or 0), int(kept))
        return out
    finally:
        conn.close()
