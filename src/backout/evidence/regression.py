"""A regression eval case for the failure that triggered a rollback, written beside the postmortem.

`write_regression_case` writes `<incident>/regression/<name>.json` (0600, folder 0700), which
`engine eval --cases-dir <incident>/regression` runs as one extra case named `name`. The format
(`backout-regression/1`):

    {
      "format": "backout-regression/1",
      "name": "regression_20261127t011500z_2_4_0_errors",   # the case's name in eval reports
      "incident": "20261127T011500Z-2.4.0-errors",
      "deployment": "engine",
      "version": "2.4.0-errors",          # the bad version: the case is meant to fail on it
      "good_version": "2.3.1",            # the version rolled back to: the case passes on it
      "trigger": "errors",                # the verdict's trigger: health, errors, latency, evals
      "reason": "error rate 31% vs 0.5% baseline",
      "kind": "turn" | "health",
      "requests": [{"task_id": "t-17", "message": "..."}],     # kind "turn": turns to replay
      "expect": {"status": 200, "lifecycle": "completed"},    # kind "turn"
                | {"status": 200, "health": "ok"},            # kind "health"
      "cases": ["fact_simple_statement"],  # built-in eval cases that failed; re-run by this case
      "created_at": "2026-11-27T01:16:02+00:00"
    }

kind "turn" (services whose profile names a `turn_path`, e.g. the Engine's turns): POST to `path` MAX_REQUESTS times, cycling over the tasks whose turns failed, each
under the original task id plus a fresh suffix (request bodies are not logged, so the message is
a neutral probe that triggers no tool call), expecting `expect.status` and a stream ending in
`thread_lifecycle: completed`. A failure tied to one task's stored state is not reproduced by a
fresh task id.
kind "health": GET /health answers `expect.status` with status `ok` (a crash at boot, a failing
health check, or a failure only the eval cases saw). `cases` are run by the case in every kind.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backout.evidence.redact import Redactor
from backout.fsutil import ensure_private_dir, replace_text

__all__ = ["FORMAT", "MAX_REQUESTS", "PROBE_MESSAGE", "case_name", "regression_case",
           "write_regression_case"]

FORMAT = "backout-regression/1"
MAX_REQUESTS = 10  # turns a "turn" case makes: a 30% failure rate shows again 97% of the time
PROBE_MESSAGE = "Regression probe: how is the plan going?"  # no statement, no tool: no side effects


def case_name(incident: dict[str, Any]) -> str | None:
    """`regression_<incident-id-slug>`, or None when the incident has neither id nor bad version."""
    source = incident.get("id") or incident.get("from_version")
    if not source:
        return None
    slug = re.sub(r"[^a-z0-9]+", "_", str(source).lower()).strip("_")
    return f"regression_{slug}" if slug else None


def regression_case(incident: dict[str, Any], turn_path: str | None = None) -> dict[str, Any] | None:
    """The regression case of an incident as a dict; None when there is nothing to test against.
    Failed requests to `turn_path` (the profile's) become a "turn" case; without one, a "health" case."""
    name = case_name(incident)
    if name is None or not incident.get("from_version"):
        return None
    requests = _requests(incident.get("failed_requests") or [], turn_path) if turn_path else []
    kind = "turn" if requests else "health"
    expect = {"status": 200, **({"lifecycle": "completed"} if requests else {"health": "ok"})}
    return {"format": FORMAT, "name": name, "incident": incident.get("id"),
            "deployment": incident.get("deployment"), "version": incident.get("from_version"),
            "good_version": incident.get("to_version"), "trigger": _trigger(incident),
            "reason": incident.get("reason"), "kind": kind, "requests": requests, "expect": expect,
            **({"path": turn_path} if requests else {}),
            "cases": _cases(incident.get("failed_eval_cases") or []),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds")}


def write_regression_case(folder: Path, incident: dict[str, Any], redactor: Redactor | None = None,
                          turn_path: str | None = None) -> Path | None:
    """Write `folder/regression/<name>.json` (0600); None (no file) when nothing can be tested."""
    case = regression_case(incident, turn_path)
    if case is None:
        return None
    case = (redactor or Redactor()).obj(case)  # the reason may quote a log line
    target = ensure_private_dir(folder / "regression")
    path = target / f"{case['name']}.json"
    replace_text(path, json.dumps(case, indent=2) + "\n", mode=0o600)
    return path


def _trigger(incident: dict[str, Any]) -> str | None:
    verdict = incident.get("verdict") or {}
    if verdict.get("trigger"):
        return str(verdict["trigger"])
    triggers = verdict.get("triggers") or []
    return str(triggers[0]) if triggers else None


def _requests(failed: list[Any], turn_path: str) -> list[dict[str, str]]:
    """MAX_REQUESTS probes over the distinct tasks whose turns failed server-side (none: [])."""
    tasks = list(dict.fromkeys(str(row.get("task_id") or "regression") for row in failed
                               if isinstance(row, dict) and _is_failed_turn(row, turn_path)))
    # A failure that hits a share of turns needs several tries to show again: cycle the tasks.
    return [{"task_id": tasks[i % len(tasks)], "message": PROBE_MESSAGE}
            for i in range(MAX_REQUESTS)] if tasks else []


def _is_failed_turn(row: dict[str, Any], turn_path: str) -> bool:
    """A request to `turn_path` that failed on the server's side (5xx, or no answer at all)."""
    path, status = row.get("path"), row.get("status")
    is_turn = not path or str(path).split("?")[0].rstrip("/") == turn_path.rstrip("/")
    try:
        server_side = status is None or int(status) >= 500 or int(status) == 0
    except (TypeError, ValueError):
        server_side = True
    return is_turn and server_side


def _cases(names: list[Any]) -> list[str]:
    return list(dict.fromkeys(str(n) for n in names if n))
