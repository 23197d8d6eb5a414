"""A whole drill, start to report: the phases in order, the checks, the result, and the cleanup."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from backout.flows.drill import Drill, DrillFailed
from backout.flows.drill_checks import drill_checks, table_rows
from backout.flows.drill_setup import FIRST_SIGNAL, Rehearsal, Staging
from backout.fsutil import ensure_private_dir
from backout.report import load_history, slowest_phases, write_report

__all__ = ["run_drill", "drills_folder"]


def drills_folder(staging: Staging) -> Path:
    """Where drill reports are kept: the deployment's state folder, or ./.backout for a self-contained drill."""
    if staging.temporary is not None:
        return Path(".backout").absolute() / "drills"
    return staging.target.state_dir / "drills"


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _rehearse(drill: Drill) -> dict[str, Any]:
    drill.bring_up()
    drill.seed()
    rollback = drill.upgrade_and_rollback()
    if rollback is None:
        rollback = drill.manual_rollback()
    drill.upgrade_phases()
    drill.rollback_phases(rollback)
    return rollback


def _summary(drill: Drill, passed: bool, rollback: dict[str, Any] | None, loss: int | None) -> str:
    if drill.failure:
        return f"RED: the drill stopped in {drill.failure['where']}: {drill.failure['why']}"
    recovery = (drill.marks["recovered"] or 0) - (drill.marks["switch"] or 0)
    said = (f"rolled back {drill.broken} -> {drill.production} ({rollback['layer'] if rollback else '?'} layer) "
            f"{recovery:.1f}s after the switch; {loss or 0} rows lost")
    return ("GREEN: " if passed else "RED: ") + said


def run_drill(staging: Staging, mode: str, plan: Rehearsal, on_phase: Callable[[dict[str, Any]], None] | None = None,
              watch_s: float = 45, keep: bool = False) -> dict[str, Any]:
    """Run the drill, write its report, clean up; the result (`passed`, phases, checks, ...)."""
    drill = Drill(staging, mode, plan, on_phase, watch_s)
    passed = False
    try:
        rollback, tables, checks = _rehearse_and_check(drill, staging)
        passed = drill.failure is None and all(c["passed"] for c in checks)
        loss = sum(r["lost"] for r in tables) if tables else None
        result = _result(drill, rollback, tables, checks, passed, loss)
        # a self-contained drill's folder goes away when it passed: the report names no path inside it
        result["staging_folder_removed"] = staging.temporary is not None and passed and not keep
        folder = drills_folder(staging)
        _keep_incident(result, staging, folder)
        history = load_history(folder)
        result["slowest"] = slowest_phases(result, history)
        json_path, html_path = write_report(folder, result, history)
        result["report"] = {"json": str(json_path), "html": str(html_path)}
        return result
    finally:  # also on Ctrl-C: no Engine left running, the folder kept unless the drill passed
        _clean_up(drill, staging, passed, keep)


def _rehearse_and_check(drill: Drill, staging: Staging) -> tuple[dict[str, Any] | None, list[dict[str, Any]],
                                                                 list[dict[str, Any]]]:
    rollback: dict[str, Any] | None = None
    tables: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    try:
        rollback = _rehearse(drill)
        with drill.phase("checks") as p:  # rows per table, the bad window's replay, health and evals
            tables = table_rows(drill, rollback)
            checks = drill_checks(drill, rollback, tables)
            p["detail"] = f"{sum(1 for c in checks if c['passed'])} of {len(checks)} passed"
    except DrillFailed as exc:
        drill.failure = {"where": exc.where, "why": exc.why, "next": _next_steps(staging, exc)}
    except Exception as exc:  # a red report and a clean-up beat a traceback that leaves processes behind
        failed = DrillFailed("the drill itself", f"{type(exc).__name__}: {exc}")
        drill.failure = {"where": failed.where, "why": failed.why, "next": _next_steps(staging, failed)}
    finally:
        if drill.traffic is not None:
            drill.traffic.stop()
    return rollback, tables, checks


def _result(drill: Drill, rollback: dict[str, Any] | None, tables: list[dict[str, Any]],
            checks: list[dict[str, Any]], passed: bool, loss: int | None) -> dict[str, Any]:
    recovery = (drill.marks["recovered"] - drill.marks["switch"]) \
        if drill.marks["recovered"] and drill.marks["switch"] else None
    traffic = drill.traffic.turns if drill.traffic else []
    edges = [t for t in drill.marks.values() if t] + [t for s in drill.switch_overs for t in (s["from"], s["to"]) if t]
    return {
        "format": "backout-drill/1", "id": datetime.fromtimestamp(drill.started, timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "started_at": _stamp(drill.started), "finished_at": _stamp(time.time()),
        "deployment": drill.target.deployment, "runtime": drill.settings.runtime,
        "self_contained": drill.staging.temporary is not None, "break": drill.mode,
        "profile": drill.target.profile.name, "traffic_kind": drill.plan.traffic,
        "staging_folder": str(drill.staging.temporary) if drill.staging.temporary else None,
        "production_version": drill.production, "broken_version": drill.broken, "passed": passed,
        "summary": _summary(drill, passed, rollback, loss), "phases": drill.phases, "marks": drill.marks,
        "trigger": drill.triggers(rollback) if rollback else [], "signals": drill.signals(),
        "expected_trigger": FIRST_SIGNAL.get(drill.mode) if drill.expected else None,
        "expected_triggers": sorted(drill.expected) if drill.expected else None,
        "switch_overs": drill.switch_overs, "layer": (rollback or {}).get("layer"),
        "layer_reason": (rollback or {}).get("layer_reason", ""), "checks": checks,
        "targets": {"rto_s": drill.settings.drill.rto.total_seconds(), "rpo_rows": drill.settings.drill.rpo_rows,
                    "recovery_s": round(recovery, 3) if recovery is not None else None, "data_loss_rows": loss},
        "tables": tables,
        "traffic": {"total": len(traffic), "errors": sum(1 for t in traffic if t.status >= 500 or t.status == 0),
                    "started": drill.traffic.started_at if drill.traffic else None,
                    "series": drill.traffic.series(edges) if drill.traffic else []},
        "incident": (rollback or {}).get("incident_folder"), "failure": drill.failure,
        "total_seconds": round(time.time() - drill.started, 3),
    }


def _keep_incident(result: dict[str, Any], staging: Staging, folder: Path) -> None:
    """A self-contained drill's folder goes away: its incident (postmortem, evidence, salvage) is kept beside
    the report."""
    incident = result.get("incident")
    if staging.temporary is None or not incident or not Path(incident).is_dir():
        return
    ensure_private_dir(folder)
    kept = folder / f"drill-{result['id']}-incident"
    shutil.copytree(incident, kept, dirs_exist_ok=True)
    result["incident"] = str(kept)


def _next_steps(staging: Staging, exc: DrillFailed) -> list[str]:
    steps = [f"look at the deployment's state in {staging.target.state_dir}"]
    if "rollback" in exc.where:
        steps.insert(0, f"finish the rollback: backout rollback --resume --config {staging.config}")
    elif "upgrade" in exc.where or "drill itself" in exc.where:
        steps.insert(0, f"see `backout status --config {staging.config}`; finish an interrupted upgrade or rollback "
                        "with `--resume` (or set it aside with `--abandon`)")
    if staging.temporary is not None:
        steps.append(f"the drill's folder {staging.temporary} is kept for inspection; remove it when done")
    return steps


def _clean_up(drill: Drill, staging: Staging, passed: bool, keep: bool) -> None:
    if staging.temporary is None:
        return  # a configured staging deployment stays as the rollback left it
    if passed and not keep:
        drill.backout("stop", "--yes")
        staging.cleanup()
    else:
        drill.backout("stop", "--yes")
