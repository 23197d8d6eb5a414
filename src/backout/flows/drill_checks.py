"""What a drill proves at the end, each check pass or fail: nothing lost, the bad window salvaged and
replayable, the service healthy with evals green, the right trigger and layer, within RTO and RPO."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from backout.brain.manifest import SnapshotStore
from backout.brain.salvage import SUMMARY_FILE
from backout.brain.tables import connect_readonly, quote_ident, user_tables
from backout.flows.drill import Drill, rows_kept

__all__ = ["drill_checks", "table_rows"]


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _bad_window_rows(quarantined: Path, manifest_tables: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Rows of the displaced brain past the restore point's marks (every row of a table it did not have)."""
    conn = connect_readonly(quarantined)
    try:
        out = {}
        for table in user_tables(conn):
            mark = manifest_tables.get(table)
            high = int((mark or {}).get("max_rowid") or 0)
            try:
                out[table] = int(conn.execute(f"SELECT count(*) FROM {quote_ident(table)} WHERE rowid > ?",
                                              (high,)).fetchone()[0])
            except sqlite3.OperationalError:  # WITHOUT ROWID: not measurable by rowid
                continue
        return out
    finally:
        conn.close()


def _salvaged_added(rollback: dict[str, Any]) -> dict[str, int]:
    """Rows salvage found *added* per table (changed rows cannot stand in for missing new ones)."""
    folder = (rollback.get("salvage") or {}).get("folder")
    if not folder:
        return {}
    summary = json.loads((Path(folder) / SUMMARY_FILE).read_text(encoding="utf-8"))
    return {t["table"]: int(t["added"]) for t in summary.get("tables", [])}


def table_rows(drill: Drill, rollback: dict[str, Any]) -> list[dict[str, Any]]:
    """Per table: rows before the upgrade (and still there), written in the bad window, salvaged, and lost."""
    store = SnapshotStore(drill.target.snapshot_dir)
    snapshot_id = rollback["snapshot"]["id"]
    kept = rows_kept(drill.target.brain, store, snapshot_id)
    tables = store.load(snapshot_id).tables
    bad: dict[str, int] = {}
    if rollback.get("quarantine"):
        bad = _bad_window_rows(Path(rollback["quarantine"]) / drill.target.brain.name, tables)
    added = _salvaged_added(rollback)
    rows = []
    for table in sorted(set(tables) | set(bad)):
        before, still = kept.get(table, (0, 0))
        lost = (before - still) + max(0, bad.get(table, 0) - added.get(table, 0))
        rows.append({"table": table, "before": before, "kept": still, "bad_window": bad.get(table, 0),
                     "salvaged": added.get(table, 0), "lost": lost})
    return rows


def _accepted_turns(drill: Drill) -> dict[str, Any]:
    """Every turn the Engine accepted during the drill is in its brain now (after the replay): the Engine keeps
    one episode per turn. (A service driven by [drill] requests is checked by its rows, above.)"""
    wanted = Counter(t.task_id for t in (drill.traffic.turns if drill.traffic else []) if t.ok)
    conn = connect_readonly(drill.target.brain)
    try:
        have = dict(conn.execute("SELECT task_id, count(*) FROM episodes GROUP BY task_id").fetchall())
    except sqlite3.OperationalError:
        return _check("every accepted turn in the brain", True, "this service keeps no episodes: not measured")
    finally:
        conn.close()
    missing = sum(max(0, n - int(have.get(task, 0))) for task, n in wanted.items())
    return _check("every accepted turn in the brain", missing == 0,
                  f"{sum(wanted.values())} turns accepted during the drill, {missing} missing from the brain")


def _replay(drill: Drill, rollback: dict[str, Any]) -> dict[str, Any]:
    if not rollback.get("salvage"):
        return _check("bad-window rows replayable", True, "nothing to replay (image layer)")
    # Traffic goes on after the rollback, so the old version takes the bad window's integer keys: new keys for
    # those rows, as an operator would replay them (SQL replay; the Engine's import keeps its own ids).
    out = drill.backout("salvage", "replay", rollback["incident_id"], "--renumber", "--yes", "--json")
    try:
        report = json.loads(out.stdout)
        totals = report["totals"]
        renumbered = sum(int(t.get("renumbered_rows", 0)) for t in report["tables"])
    except (ValueError, KeyError, TypeError):
        lines = (out.stderr or out.stdout).strip().splitlines()
        return _check("bad-window rows replayable", False, lines[-1] if lines else f"exit {out.returncode}")
    return _check("bad-window rows replayable", out.returncode == 0,
                  f"replayed into {drill.production}: {totals['replayed']} rows ({renumbered} under new keys), "
                  f"{totals['already_present']} already "
                  f"there, {totals['not_replayed']} not replayable, {totals['left_out']} left out (external effects, ledgers)")


def _salvage_check(rollback: dict[str, Any], tables: list[dict[str, Any]]) -> dict[str, Any]:
    short = [r["table"] for r in tables if r["salvaged"] < r["bad_window"]]
    bad_total = sum(r["bad_window"] for r in tables)
    if rollback.get("layer") == "brain" and not rollback.get("quarantine"):
        return _check("bad-window rows in the salvage bundle", False, "not measured: no displaced brain to compare")
    return _check("bad-window rows in the salvage bundle", not short,
                  f"{bad_total} rows added in the bad window, {sum(r['salvaged'] for r in tables)} salvaged as added"
                  + (f"; short in {', '.join(short)}" if short else ""))


def _recovered_check(drill: Drill, rollback: dict[str, Any]) -> dict[str, Any]:
    health = drill.target.probe(timeout=10)
    verify = rollback.get("verify") or {}
    ok = health.ok and rollback.get("outcome") == "rolled-back" and bool(verify.get("ok"))
    return _check("restored service healthy and verified, evals green", ok,
                  f"rollback {rollback.get('outcome')}; health: {health.reason()}; errors: "
                  f"{(verify.get('errors') or {}).get('detail', 'not measured')}; evals: "
                  f"{(verify.get('evals') or {}).get('detail', 'not run')}")


def _trigger_check(drill: Drill, triggers: list[str]) -> dict[str, Any]:
    if drill.expected is None:  # a deployment's own broken build: any signal that called for the rollback will do
        return _check("a trigger", triggers != ["none"], ", ".join(triggers))
    return _check("right trigger", bool(set(triggers) & drill.expected),
                  f"{', '.join(triggers)} (expected {' or '.join(sorted(drill.expected))})")


def _layer_check(drill: Drill, rollback: dict[str, Any]) -> dict[str, Any]:
    layer, reason = rollback.get("layer"), rollback.get("layer_reason", "")
    if drill.plan.layer is None:
        return _check("layer chosen", layer in ("image", "brain"), f"{layer}: {reason} (no expect_layer set)")
    return _check("right layer", layer == drill.plan.layer, f"{layer}: {reason} (expected {drill.plan.layer})")


def drill_checks(drill: Drill, rollback: dict[str, Any], tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every check of the drill, in order."""
    settings = drill.settings
    before, kept = sum(r["before"] for r in tables), sum(r["kept"] for r in tables)
    loss = sum(r["lost"] for r in tables)
    triggers = drill.triggers(rollback)
    verified = rollback.get("outcome") == "rolled-back"
    recovery = (drill.marks["recovered"] - drill.marks["switch"]) \
        if verified and drill.marks["recovered"] and drill.marks["switch"] else None
    rto = settings.drill.rto.total_seconds()
    replay = _replay(drill, rollback)
    return [
        _check("every pre-upgrade row present", kept == before,
               f"{before} rows in the restore point, {kept} of them in the brain now"),
        _salvage_check(rollback, tables),
        replay,
        *([_accepted_turns(drill)] if drill.plan.traffic == "engine" else []),
        _recovered_check(drill, rollback),
        _trigger_check(drill, triggers),
        _layer_check(drill, rollback),
        _check("within the RTO", recovery is not None and recovery <= rto,
               f"switch to verified recovery {recovery:.1f}s (target {rto:.0f}s)" if recovery is not None
               else "no verified recovery"),
        _check("within the RPO", loss <= settings.drill.rpo_rows,
               f"{loss} rows lost (target {settings.drill.rpo_rows})"),
    ]
