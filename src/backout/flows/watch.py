"""The watch window after an upgrade: the verdict, periodically, with the rollback pre-armed.

roll-back → the rollback runs at once (or, without auto-rollback, the command is printed);
inconclusive or hold → keep watching; at the end of the window the version is promoted: a history
line, and the staged copy of the restore point is removed. Stopping the watch (Ctrl-C) changes
nothing; `backout watch` picks it up again from `watch.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from backout.brain.restore import staged_path
from backout.config import Target
from backout.errors import EXIT_USAGE, BackoutError
from backout.flows.check import check
from backout.flows.rollback import RollbackRequest
from backout.flows.rollback_run import rollback_now
from backout.flows.paths import watch_state
from backout.history import Change, History, deployment_state
from backout.lock import operation_lock
from backout.plan import Step
from backout.runtime.base import Runtime
from backout.signals.model import EvalRun

__all__ = ["WatchEvent", "load_watch", "promote", "rollback_step_events", "watch"]


@dataclass
class WatchEvent:
    """One thing that happened while watching (streamed as a JSON line with --json)."""

    event: str  # "check", "rollback", "rollback-step", "advice", "promoted", "ended"
    left_s: float
    verdict: dict[str, Any] | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"event": self.event, "at": round(self.at, 3), "left_s": round(self.left_s, 1),
                "verdict": self.verdict, "detail": self.detail, **self.data}


def load_watch(target: Target) -> dict[str, Any]:
    """The watch window of the last upgrade; BackoutError when no upgrade is being watched."""
    try:
        state: dict[str, Any] = json.loads(watch_state(target).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackoutError(f"no upgrade of {target.deployment} is being watched (it was promoted or rolled back, "
                           "or none was made with `backout upgrade`)", EXIT_USAGE) from None
    except ValueError:
        raise BackoutError(f"{watch_state(target)} is corrupt; inspect it or remove it", EXIT_USAGE) from None
    return state


def _evals(state: dict[str, Any]) -> EvalRun | None:
    data = state.get("evals")
    return EvalRun(**data) if data else None


def promote(target: Target, state: dict[str, Any], verdict: str = "none") -> str:
    """The window ended without a roll-back verdict: record it (with the last verdict: only a hold vouches for the
    version in the ledger), drop the staged copy, close the window."""
    History(target.state_dir).append(Change(
        deployment=target.deployment, kind="promote", from_version=state["previous"], to_version=state["version"],
        outcome="ok", reason=f"last verdict: {verdict}",
        detail=f"watched for {time.time() - state['switched_at']:.0f}s without a roll-back verdict"))
    point = state.get("restore_point") or {}
    if point.get("snapshot_id"):
        staged = staged_path(target.brain, point["snapshot_id"])
        for path in (staged, staged.with_name(staged.name + ".verified")):
            path.unlink(missing_ok=True)
    watch_state(target).unlink(missing_ok=True)
    return f"{state['version']} promoted; the restore point ({state['previous']}) stays pinned"


def watch(target: Target, runtime: Runtime, auto_rollback: bool, on_event: Callable[[WatchEvent], None],
          sleep: Callable[[float], None] = time.sleep) -> tuple[str, dict[str, Any] | None]:
    """Watch until the window ends or a roll-back verdict; ("promoted"|"rolled-back"|..., rollback result)."""
    state = load_watch(target)
    every = target.require_settings().upgrade.check_every.total_seconds()
    evals = _evals(state)
    while True:
        if not watch_state(target).exists():  # rolled back (or promoted) from elsewhere meanwhile
            on_event(WatchEvent("ended", 0.0, None, "the watch window was closed by another command"))
            return "ended", None
        left = state["until"] - time.time()
        verdict = check(target, runtime, with_evals=False, evals=evals).to_dict()
        on_event(WatchEvent("check", max(0.0, left), verdict, verdict["reason"]))
        if verdict["decision"] == "roll-back":
            return _roll_back(target, runtime, state, verdict, auto_rollback, on_event)
        if left <= 0:
            return _promote_if_current(target, runtime, state, verdict, on_event)
        sleep(min(every, max(0.5, left)))


def rollback_step_events(on_event: Callable[[WatchEvent], None]) -> Callable[[Step, str], None]:
    """Each finished step of the rollback as a "rollback-step" event (its name, seconds and title)."""
    began: dict[str, float] = {}

    def show(step: Step, phase: str) -> None:
        if phase == "start":
            began[step.name] = time.monotonic()
            return
        seconds = round(time.monotonic() - began.get(step.name, time.monotonic()), 1)
        on_event(WatchEvent("rollback-step", 0.0, None, f"done {step.name:<12} {seconds:>6.1f}s  {step.title}",
                            {"step": step.name, "seconds": seconds}))
    return show


def _promote_if_current(target: Target, runtime: Runtime, state: dict[str, Any], verdict: dict[str, Any],
                        on_event: Callable[[WatchEvent], None]) -> tuple[str, dict[str, Any] | None]:
    with operation_lock(deployment_state(target.state_dir, target.deployment), "promote"):
        current = runtime.current()
        if not watch_state(target).exists() or current.version != state["version"]:
            detail = f"{current.version or 'nothing'} runs now, not {state['version']}: nothing to promote"
            on_event(WatchEvent("ended", 0.0, verdict, detail))
            return "ended", None
        detail = promote(target, state, str(verdict.get("decision") or "none"))
    on_event(WatchEvent("promoted", 0.0, verdict, detail))
    return "promoted", None


def _roll_back(target: Target, runtime: Runtime, state: dict[str, Any], verdict: dict[str, Any],
               auto_rollback: bool, on_event: Callable[[WatchEvent], None]) -> tuple[str, dict[str, Any] | None]:
    left = max(0.0, state["until"] - time.time())
    if not auto_rollback:
        command = f"backout rollback --to {state['previous']} --reason {json.dumps(verdict['reason'])}"
        on_event(WatchEvent("advice", left, verdict, f"roll back now: {command}", {"command": command}))
        return "roll-back-advised", None
    on_event(WatchEvent("rollback", left, verdict, f"rolling back to {state['previous']}: {verdict['reason']}"))
    done = rollback_now(target, runtime, RollbackRequest(to_version=state["previous"], reason=verdict["reason"],
                                                         snapshot_id=(state.get("restore_point") or {}).get("snapshot_id")),
                        on_step=rollback_step_events(on_event))
    watch_state(target).unlink(missing_ok=True)
    outcome = done["result"]["outcome"]
    return ("rolled-back" if outcome == "rolled-back" else f"rollback-{outcome}"), done

