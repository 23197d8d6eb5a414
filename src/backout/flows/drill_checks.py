"""What a drill proves at the end, each check pass or fail: nothing lost, the bad window salvaged and
replayable, the service healthy with evals green, the right trigger and layer, within RTO and RPO."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backout.brain.manifest import SnapshotStore
from backout.brain.tables import connect_readonly, quote_ident
from backout.flows.drill import Drill, rows_kept
from backout.signals.health import probe

__all__ = ["drill_checks", "table_rows"]


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _bad_window_rows(quarantined: Path, manifest_tables: dict[str, dict[str, Any]]) -> dict[str, int]:
    conn = connect_readonly(quarantined)
    try:
        out = {}
        for table, mark in manifest_tables.items():
            high = mark.get("max_rowid")
            if high is None:
                continue
            out[table] = int(conn.execute(f"SELECT count(*) FROM {quote_ident(table)} WHERE rowid > ?",
                                          (high,)).fetchone()[0])
        return out
    finally:
        conn.close()


def table_rows(drill: Drill, rollback: dict[str, Any]) -> list[dict[str, Any]]:
    """Per table: rows before the upgrade, written in the bad window, salvaged, and lost."""
    store = SnapshotStore(drill.target.snapshot_dir)
    snapshot_id = rollback["snapshot"]["id"]
    kept = rows_kept(drill.target.brain, store, snapshot_id)
    tables = store.load(snapshot_id).tables
    bad: dict[str, int] = {}
    salvaged: dict[str, int] = {}
    if rollback.get("quarantine"):
        bad = _bad_window_rows(Path(rollback["quarantine"]) / drill.target.brain.name, tables)
    if rollback.get("salvage"):
        salvaged = dict(rollback["salvage"]["tables"])
    rows = []
    for table in sorted(tables):
        before, still = kept.get(table, (0, 0))
        lost = (before - still) + max(0, bad.get(table, 0) - salvaged.get(table, 0))
        rows.append({"table": table, "before": before, "kept": still, "bad_window": bad.get(table, 0),
                     "salvaged": salvaged.get(table, 0), "lost": lost})
    return rows


def _replay(drill: Drill, rollback: dict[str, Any]) -> dict[str, Any]:
    if not rollback.get("salvage"):
        return _check("bad-window rows replayable", True, "nothing to replay (image layer)")
    out = drill.backout("salvage", "replay", rollback["incident_id"], "--yes", "--json")
    try:
        totals = json.loads(out.stdout)["totals"]
    except (ValueError, KeyError, TypeError):
        lines = (out.stderr or out.stdout).strip().splitlines()
        return _check("bad-window rows replayable", False, lines[-1] if lines else f"exit {out.returncode}")
    return _check("bad-window rows replayable", out.returncode == 0,
                  f"replayed into {drill.production}: {totals['replayed']} rows, {totals['already_present']} already "
                  f"there, {totals['not_replayed']} not replayable, {totals['left_out']} left out (mcp_calls, ledgers)")


def drill_checks(drill: Drill, rollback: dict[str, Any], tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every check of the drill, in order."""
    settings = drill.settings
    before, kept = sum(r["before"] for r in tables), sum(r["kept"] for r in tables)
    salvage_total = (rollback.get("salvage") or {}).get("total", 0)
    bad_total = sum(r["bad_window"] for r in tables)
    loss = sum(r["lost"] for r in tables)
    health = probe(str(drill.target.health_url), timeout=10)
    evals = ((rollback.get("verify") or {}).get("evals") or {})
    triggers = drill.triggers(rollback)
    recovery = (drill.marks["recovered"] - drill.marks["switch"]) \
        if drill.marks["recovered"] and drill.marks["switch"] else None
    rto = settings.drill.rto.total_seconds()
    return [
        _check("every pre-upgrade row present", kept == before,
               f"{before} rows in the restore point, {kept} of them in the brain now"),
        _check("bad-window rows in the salvage bundle", salvage_total >= bad_total,
               f"{bad_total} rows written in the bad window, {salvage_total} salvaged"),
        _replay(drill, rollback),
        _check("restored service healthy, evals green", health.ok and evals.get("ok", True),
               f"health: {health.reason()}; evals: {evals.get('detail', 'not run')}"),
        _check("right trigger", bool(set(triggers) & drill.expected),
               f"{', '.join(triggers)} (expected {' or '.join(sorted(drill.expected))})"),
        _check("right layer", rollback.get("layer") == "brain",
               f"{rollback.get('layer')}: {rollback.get('layer_reason', '')}"),
        _check("within the RTO", recovery is not None and recovery <= rto,
               f"switch to verified recovery {recovery:.1f}s (target {rto:.0f}s)" if recovery is not None
               else "no recovery measured"),
        _check("within the RPO", loss <= settings.drill.rpo_rows,
               f"{loss} rows lost (target {settings.drill.rpo_rows})"),
    ]
