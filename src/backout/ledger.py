"""The version ledger: what backout has judged of each version of a deployment, and the facts derived from it.

One source of truth per fact. The standing of every version (good, bad, unknown), the rollback
target, the pending operations and the version running are each computed here, once, from the
history, the frozen list, the restore point and the journals; `status`, `history`, `rollback`,
`upgrade`, `watch` and `baseline` all ask this module, so they cannot disagree.

A version is *good* when it was promoted at the end of a watch window, served with a hold verdict,
was healthy at an upgrade's pre-flight (it became the restore point), or was the verified target of
a rollback. It is *bad* when it was rolled back from, failed to start after a switch or upgrade, or
is frozen. An unfreeze clears a judgement (the version is *unknown* again). Later events win.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from backout.config import Target
from backout.errors import EXIT_REFUSED, BackoutError
from backout.freeze import frozen_versions
from backout.history import STARTS, History, RestorePoint, load_restore_point

__all__ = ["Judgement", "Ledger", "NoRollback", "Pending", "RestorePointOf", "RollbackTarget", "Running",
           "ServedWindow", "Standing", "command_for", "pending_operations", "running_version"]

Standing = Literal["good", "bad", "unknown"]


class NoRollback(BackoutError):
    """No rollback is possible (or none is needed); the message says why and what to do instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_REFUSED)


@dataclass(frozen=True)
class Judgement:
    """What backout knows of one version, and why."""

    version: str
    standing: Standing
    why: str
    at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"version": self.version, "standing": self.standing, "why": self.why, "at": self.at}


@dataclass(frozen=True)
class RollbackTarget:
    """The version a rollback returns to, where that choice comes from, and the snapshot it names."""

    version: str
    source: str
    snapshot_id: str | None


@dataclass(frozen=True)
class ServedWindow:
    """A stretch of time during which one version served (from the history)."""

    version: str
    start: float
    end: float | None  # None: still serving

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"version": self.version, "from": self.start, "to": self.end}


@dataclass(frozen=True)
class RestorePointOf:
    """The restore point one upgrade took (its final snapshot), and whether that upgrade was promoted."""

    snapshot_id: str
    from_version: str | None
    to_version: str | None
    at: str | None
    promoted: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"snapshot_id": self.snapshot_id, "from": self.from_version, "to": self.to_version, "at": self.at,
                "promoted": self.promoted}


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _judgement(entry: dict[str, Any]) -> list[Judgement]:
    """The judgements one history line makes (oldest first)."""
    kind, outcome, at = entry.get("kind"), entry.get("outcome"), entry.get("at")
    frm, to = entry.get("from_version"), entry.get("to_version")
    out: list[Judgement] = []
    if kind == "upgrade":
        healthy = entry.get("from_healthy")
        if frm and (healthy if healthy is not None else not entry.get("forced")):  # older lines: not forced
            out.append(Judgement(frm, "good", "healthy at the pre-flight of the upgrade that made it the restore point",
                                 at))
        if to and outcome == "failed" and entry.get("health"):  # it was started: not a refusal before the stop
            out.append(Judgement(to, "bad", f"the upgrade to it failed: {entry.get('detail') or 'see the history'}", at))
    elif kind == "promote" and to and outcome == "ok":
        said = str(entry.get("reason") or "")  # "last verdict: hold"; older lines say nothing
        if not said or said.endswith(": hold"):
            out.append(Judgement(to, "good", "promoted at the end of its watch window", at))
        else:
            out.append(Judgement(to, "unknown", f"promoted without a hold verdict ({said})", at))
    elif kind == "verdict" and to and outcome == "hold":
        out.append(Judgement(to, "good", "a hold verdict while it served", at))
    elif kind == "rollback":
        if frm:
            out.append(Judgement(frm, "bad", f"rolled back from ({entry.get('reason') or 'no reason given'})", at))
        if to and outcome == "ok":
            out.append(Judgement(to, "good", "verified after a rollback to it", at))
    elif kind in ("manual", "drill") and to and outcome == "failed":
        out.append(Judgement(to, "bad", f"did not become healthy after a switch: {entry.get('detail') or '?'}", at))
    elif kind == "unfreeze" and frm:
        out.append(Judgement(frm, "unknown", f"unfrozen: {entry.get('reason') or 'no reason given'}", at))
    return out


class Ledger:
    """The judgements of one deployment's versions, with the history and restore point they come from."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.entries = History(target.state_dir).entries(target.deployment)
        self.point: RestorePoint | None = load_restore_point(target.state_dir, target.deployment)
        self._judged: dict[str, Judgement] = {}
        for entry in self.entries:
            for judgement in _judgement(entry):
                self._judged[judgement.version] = judgement
        for version, why in frozen_versions(target).items():
            self._judged[version] = Judgement(version, "bad", f"frozen: {why.get('reason')}", why.get("at"))

    def standing(self, version: str) -> Judgement:
        """What backout knows of `version`."""
        return self._judged.get(version, Judgement(version, "unknown", "never promoted, checked or rolled back"))

    def judgements(self) -> list[Judgement]:
        """Every version judged so far."""
        return sorted(self._judged.values(), key=lambda j: j.at or "")

    def _starts(self) -> list[dict[str, Any]]:
        """History lines that started a version (successfully), oldest first."""
        return [e for e in self.entries if e.get("to_version") and e.get("outcome") == "ok"
                and e.get("kind") in STARTS]

    def ran_before(self, version: str | None) -> list[str]:
        """Versions that ran before the latest start of `version`, newest first (each once)."""
        starts = self._starts()
        latest = max((i for i, e in enumerate(starts) if e["to_version"] == version), default=len(starts))
        seen: list[str] = []
        for entry in reversed(starts[:latest]):
            for v in (entry["to_version"], entry.get("from_version")):
                if v and v != version and v not in seen:
                    seen.append(v)
        for entry in reversed(self.entries):  # the version an upgrade started from, if it never started here
            v = entry.get("from_version")
            if entry.get("kind") == "upgrade" and v and v != version and v not in seen:
                seen.append(v)
        return seen

    def rollback_target(self, running: "Running", asked: str | None = None,
                        snapshot_id: str | None = None) -> RollbackTarget:
        """The version a rollback returns to: --to if given (never a bad one), else the newest good version
        that ran before the one running; NoRollback when there is none or nothing to roll back."""
        point = self.point
        if asked and asked == running.version:
            state = "is running" if running.running else "ran last"
            raise NoRollback(f"{asked} {state}: it is what a rollback would leave, not a version to roll back to; "
                             f"to start it again use `backout switch {asked}`")
        if asked:
            judged = self.standing(asked)
            if judged.standing == "bad":
                raise NoRollback(f"{asked} is judged bad ({judged.why}); a rollback never returns to it. If it is fixed,"
                                 f" `backout unfreeze {asked} --reason …` first")
            same = point is not None and point.version == asked
            return RollbackTarget(asked, "asked for with --to", snapshot_id or (point.snapshot_id if same and point
                                                                              else None))
        bad = running.version
        if bad is None:
            raise NoRollback(f"nothing has run on {self.target.deployment} yet: there is nothing to roll back")
        if point is not None and point.version == bad:
            state = "is running" if running.running else "ran last"
            raise NoRollback(f"{bad} is the restore point and {state}; nothing to roll back (use --to VERSION to go "
                             "further back)")
        before = self.ran_before(bad)
        good = next((v for v in before if self.standing(v).standing == "good"), None)
        if good is None:
            unknown = next((v for v in before if self.standing(v).standing == "unknown"), None)
            hint = (f"; {unknown} ran before it but was never promoted or checked healthy: if it is good, pass "
                    f"--to {unknown}" if unknown else "; pass --to VERSION")
            raise NoRollback(f"no version judged good ran before {bad} on {self.target.deployment}{hint}")
        if point is not None and point.version == good:
            return RollbackTarget(good, f"the restore point recorded {point.recorded_at}", snapshot_id or point.snapshot_id)
        return RollbackTarget(good, f"the last version judged good before {bad} ({self.standing(good).why})",
                              snapshot_id)

    def annotated(self) -> list[dict[str, Any]]:
        """The history lines, an upgrade that a later rollback undid shown as `rolled-back` (the line itself
        was written `ok` when the new version became healthy, before its watch window)."""
        out = [dict(e) for e in self.entries]
        for i, entry in enumerate(out):
            if entry.get("kind") != "upgrade" or entry.get("outcome") != "ok":
                continue
            after = next((e for e in out[i + 1:] if e.get("kind") in (*STARTS, "stop")), None)
            if after and after.get("kind") == "rollback" and after.get("from_version") == entry.get("to_version"):
                entry.update(outcome="rolled-back", recorded_outcome="ok", rolled_back_at=after.get("at"))
        return out

    def restore_points(self) -> list[RestorePointOf]:
        """Every upgrade that took a restore point, newest first; promoted when a promote line for its version
        follows before anything else is started or stopped (the end of its watch window)."""
        out = []
        for i, entry in enumerate(self.entries):
            if entry.get("kind") != "upgrade" or not entry.get("snapshot_before"):
                continue
            promoted = False
            for later in self.entries[i + 1:] if entry.get("outcome") == "ok" else []:
                if later.get("kind") == "promote":
                    promoted = later.get("outcome") == "ok" and later.get("to_version") == entry.get("to_version")
                    break
                if later.get("kind") in (*STARTS, "stop"):
                    break
            out.append(RestorePointOf(str(entry["snapshot_before"]), entry.get("from_version"),
                                      entry.get("to_version"), entry.get("at"), promoted))
        return out[::-1]

    def served_windows(self, now: float) -> list[ServedWindow]:
        """When each version served, from the history (a switch's line is written once it is healthy; a
        stretch ends where the next change began), oldest first."""
        windows: list[ServedWindow] = []
        for entry in self.entries:
            if not entry.get("at"):
                continue
            began = _ts(entry["at"]) - float(entry.get("duration_s") or 0)
            if entry.get("kind") not in (*STARTS, "stop"):
                continue
            if windows and windows[-1].end is None:
                windows[-1] = ServedWindow(windows[-1].version, windows[-1].start, began)
            if entry.get("outcome") == "ok" and entry.get("to_version") and entry.get("kind") != "stop":
                windows.append(ServedWindow(str(entry["to_version"]), _ts(entry["at"]), None))
        return [w for w in windows if w.end is None or w.end > w.start]


@dataclass(frozen=True)
class Running:
    """The version running now (or, when nothing runs, the one that ran last)."""

    version: str | None
    running: bool
    ident: str | None = None
    since: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"version": self.version, "running": self.running, "id": self.ident, "since": self.since}


def running_version(target: Target, runtime: Any) -> Running:
    """What runs, from the runtime; when it knows nothing (no pid file, no container), what ran last."""
    current = runtime.current()
    version = current.version or History(target.state_dir).last_version(target.deployment)
    return Running(version, current.running, current.ident, current.since)


@dataclass(frozen=True)
class Pending:
    """An operation a crash or Ctrl-C left unfinished, and the commands that finish or abandon it."""

    kind: str  # "upgrade", "rollback", "restore", "watch"
    detail: str
    finish: str
    abandon: str | None
    path: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind, "detail": self.detail, "finish": self.finish, "abandon": self.abandon,
                "path": self.path}


def command_for(target: Target, *args: str) -> str:
    """A backout command line for this deployment that works as printed (names the config when needed)."""
    words = ["backout", *args]
    if target.config_path is not None and target.config_path != (Path.cwd() / "backout.toml").absolute():
        words += ["--config", str(target.config_path)]
    if target.settings is not None:
        words += ["--deployment", target.deployment]
    else:  # a deployment without a config is named by its brain and snapshot folder
        words += ["--brain", str(target.brain), "--into", str(target.snapshot_dir)]
    return shlex.join(words)


def _journal_operation(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A journal's operation and facts ({} for an unreadable one: the pending entry still shows)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}
    return dict(data.get("operation") or {}), dict(data.get("facts") or {})


def _journal_decision(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    operation, facts = _journal_operation(path)
    return dict(operation.get("decision") or {}), facts


def pending_operations(target: Target) -> list[Pending]:
    """Every unfinished operation of the deployment, with the exact command that finishes or abandons it."""
    from backout.brain.restore import restore_journal_path
    from backout.flows.paths import rollback_journal, upgrade_journal, watch_state

    out: list[Pending] = []
    upgrade, rollback = upgrade_journal(target), rollback_journal(target)
    upgrading = upgrade.exists()
    decision, facts = _journal_decision(upgrade) if upgrading else ({}, {})
    if upgrading:
        during = " (in its own rollback)" if facts.get("rolling_back") else ""
        out.append(Pending("upgrade", f"an interrupted upgrade from {decision.get('from_version')} to "
                           f"{decision.get('to_version')}{during}", command_for(target, "upgrade", "--resume"),
                           command_for(target, "upgrade", "--abandon"), str(upgrade)))
    if rollback.exists() and not facts.get("rolling_back"):  # an upgrade in its own rollback resumes both
        decision, _ = _journal_decision(rollback)
        out.append(Pending("rollback", f"an interrupted rollback from {decision.get('from_version')} to "
                           f"{decision.get('to_version')} (incident {decision.get('incident_id')})",
                           command_for(target, "rollback", "--resume"), command_for(target, "rollback", "--abandon"),
                           str(rollback)))
    restore = restore_journal_path(target.state_dir, target.brain)
    if restore.exists():
        operation, _ = _journal_operation(restore)
        if not str(operation.get("reason", "")).startswith("rollback") or not rollback.exists():
            snapshot = str(operation.get("snapshot") or "ID")
            out.append(Pending("restore", f"an interrupted restore of snapshot {snapshot} over {target.brain}",
                               command_for(target, "snapshot", "restore", snapshot), None, str(restore)))
    if watch_state(target).exists():
        out.append(Pending("watch", "the last upgrade is in its watch window (not yet promoted; "
                           f"`{command_for(target, 'rollback')}` ends it too)", command_for(target, "watch"), None,
                           str(watch_state(target))))
    return out
