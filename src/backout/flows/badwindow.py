"""The bad window as the signals saw it: requests, errors, latency, the verdict, customer impact."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from backout.brain.tables import connect_readonly, quote_ident
from backout.config import Target
from backout.errors import BackoutError
from backout.flows.check import observe, policy_of, request_samples, state_files
from backout.notify import customer_impact
from backout.runtime.base import Runtime
from backout.signals.decide import decide
from backout.signals.stats import percentile

__all__ = ["bad_window_facts", "effects_since", "epoch"]

_KEEP_FAILED = 20


def epoch(iso: str | None, default: float) -> float:
    """An ISO time as epoch seconds (`default` when missing or unreadable)."""
    if not iso:
        return default
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def _stats(samples: list[Any]) -> dict[str, Any]:
    errors = sum(1 for s in samples if s.error)
    return {"requests": len(samples), "errors": errors,
            "error_rate": round(errors / len(samples), 4) if samples else None,
            "p95_ms": _p95(samples)}


def _verdict(target: Target, runtime: Runtime, since: float) -> dict[str, Any] | None:
    """The latest verdict of the bad window, or one computed now (without evals) from the baseline."""
    files = state_files(target)
    saved = files.last_verdict(since)
    if saved is not None and saved.get("decision") == "roll-back":
        return saved
    try:
        return decide(observe(target, runtime, with_evals=False), policy_of(target.require_settings())).to_dict()
    except BackoutError:
        return saved


def bad_window_facts(target: Target, runtime: Runtime, since_iso: str | None, reason: str) -> dict[str, Any]:
    """What the bad window looked like, the symptom in one line, and whether customers felt it."""
    settings = target.require_settings()
    now = time.time()
    since = epoch(since_iso, now - settings.verdict.baseline_window.total_seconds())
    try:
        samples = request_samples(target, runtime, since, now)
    except BackoutError:
        samples = []
    files = state_files(target)
    baseline = files.load_baseline()
    base = _stats(baseline.requests) if baseline else None
    window = _stats(samples)
    reports = files.reports_since(since)
    verdict = _verdict(target, runtime, since)
    impact, why = customer_impact(window["error_rate"], window["p95_ms"], base["p95_ms"] if base else None,
                                  len(reports), settings.notify)
    symptom = reason or (verdict or {}).get("reason") or "the operator's decision"
    failed = [{"ts": s.ts, "status": s.status, "task_id": s.task_id, "path": s.path, "code": s.code}
              for s in samples if s.error][:_KEEP_FAILED]
    return {"symptom": symptom, "verdict": verdict, "window": window, "baseline": base,
            "customer_reports": reports, "impact": {"real": impact, "why": why},
            "failed_requests": failed, "failed_eval_cases": list((verdict or {}).get("failed_eval_cases", []))}


def _p95(samples: list[Any]) -> float | None:
    """p95 latency of the samples that carry a duration (None when none does)."""
    durations = [s.duration_ms for s in samples if s.duration_ms is not None]
    return round(percentile(durations, 95), 1) if durations else None


def effects_since(brain: Path, table: str | None, max_rowid: int | None,
                  since_iso: str | None) -> list[dict[str, Any]]:
    """Rows of the profile's effects table (effects outside the database, e.g. the Engine's tool calls)
    made in the bad window: after the snapshot's mark, else since the switch. None without such a table."""
    if table is None or not brain.exists():
        return []
    try:
        conn = connect_readonly(brain)
    except sqlite3.DatabaseError:
        return []
    try:
        conn.row_factory = sqlite3.Row
        name = quote_ident(table)
        if max_rowid is not None:
            rows = conn.execute(f"SELECT * FROM {name} WHERE rowid > ? ORDER BY rowid", (max_rowid,)).fetchall()
        elif since_iso:
            rows = conn.execute(f"SELECT * FROM {name} WHERE created_at >= ? ORDER BY rowid", (since_iso,)).fetchall()
        else:
            rows = []
        return [dict(r) for r in rows]
    except sqlite3.DatabaseError:
        return []  # no such table (yet), or no created_at column: nothing to list
    finally:
        conn.close()
