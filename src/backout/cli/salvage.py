"""`backout salvage`: extract the bad window's rows, show an incident's, replay them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from backout.brain.manifest import SnapshotStore, utcnow
from backout.brain.replay import ReplayReport, replay_bundle
from backout.brain.salvage import SUMMARY_FILE, SalvageError, salvage
from backout.brain.schema import SchemaError, diff, stamp
from backout.cli.common import (
    BrainOpt,
    ConfigOpt,
    DeploymentOpt,
    DryRunOpt,
    IntoOpt,
    JsonOpt,
    YesOpt,
    confirm,
    emit_json,
    fail,
    handle_errors,
    or_word,
    progress_bar,
    target_from,
)
from backout.cli.framework import Typer
from backout.cli.incidents import load_incident, state_dir_of as _state_dir
from backout.config import ConfigError, Target, find_config
from backout.errors import EXIT_FAILED, EXIT_USAGE
from backout.history import deployment_state
from backout.lock import operation_lock

__all__ = ["app"]

app = Typer(
    help="The bad window's rows: extract them from a displaced brain, show an incident's "
    "salvage, replay it into the running service.\n\n"
    "\b\nExamples:\n"
    "  backout salvage show 20261204T143012Z-2.4.0\n"
    "  backout salvage replay 20261204T143012Z-2.4.0 --dry-run",
    no_args_is_help=True,
)

IncidentArg = typer.Argument(
    ..., metavar="INCIDENT", help="An incident id, as `backout incidents` lists them. A unique beginning of one "
    "works too, and latest names the newest."
)


SnapshotOpt = typer.Option(
    ..., "--snapshot", metavar="ID", help="The snapshot the brain was, or will be, restored to. A unique beginning "
    "of its id works too, and latest names the newest."
)
FromOpt = typer.Option(..., "--from", metavar="PATH", help="The newer brain, e.g. the quarantined one.")
BundleDirOpt = typer.Option(
    None, "--bundle-dir", metavar="DIR",
    help="Where to write the bundle (default: salvage/SNAPSHOT-TIME in the state folder).",
)
SnapshotDirOpt = typer.Option(
    None, "--snapshot-dir", metavar="DIR",
    help="The folder holding the snapshot (default: from the config, or ./.backout/snapshots).",
)
IncludeOpt = typer.Option(None, "--include", metavar="GLOB", help="Only these tables (repeatable).")
ExcludeOpt = typer.Option(None, "--exclude", metavar="GLOB", help="Skip these tables (repeatable).")


@app.command("extract")
def extract(
    snapshot_id: str = SnapshotOpt,
    source: Path = FromOpt,
    bundle_dir: Path | None = BundleDirOpt,
    include: list[str] | None = IncludeOpt,
    exclude: list[str] | None = ExcludeOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
    config: Path | None = ConfigOpt,
    deployment: str | None = DeploymentOpt,
    brain: Path | None = BrainOpt,
    snapshot_dir: Path | None = SnapshotDirOpt,
    out: Path | None = typer.Option(None, "--out", hidden=True),  # the old names of --bundle-dir and
    into: Path | None = typer.Option(None, "--into", hidden=True),  # --snapshot-dir, for scripts
) -> None:
    """Extract the rows written after a snapshot from a newer brain into a replayable bundle.

    One JSONL file per table, a summary with counts and the schema diff, and for the Engine a
    file that POST /memory/import accepts. Reads the newer brain only; writes only the bundle.

    \b
    Examples:
      backout salvage extract --snapshot 20261204T101500Z-3f9a1c \\
          --from .backout/quarantine/20261204T143012Z-manual-restore/brain.sqlite --dry-run
      backout salvage extract --snapshot 20261204T101500Z-3f9a1c --from old-brain.sqlite \\
          --brain ./brain.sqlite --snapshot-dir ./snapshots --bundle-dir ./bundle"""
    out = _one_of("--bundle-dir", bundle_dir, "--out", out)
    into = _one_of("--snapshot-dir", snapshot_dir, "--into", into)
    target = target_from(config, deployment, brain, into)
    store = SnapshotStore(target.snapshot_dir)
    with handle_errors():
        snapshot_id = store.resolve(snapshot_id, target.deployment, target.brain)
        manifest = store.load(snapshot_id)
    stamp_now = utcnow().strftime("%Y%m%dT%H%M%SZ")
    folder = out or target.state_dir / "salvage" / f"{snapshot_id}-{stamp_now}"
    if dry_run:
        plan = {
            "dry_run": True,
            "read": str(source),
            "since": manifest.created_at,
            "write": str(folder),
            "tables": sorted(manifest.tables),
        }
        if as_json:
            emit_json(plan)
            return
        typer.echo(
            f"would read {source} for rows written after {manifest.created_at} (snapshot "
            f"{snapshot_id}) and write the bundle to {folder}; the brain is only read"
        )
        return
    try:
        changes = diff(stamp(store.db_path(snapshot_id)), stamp(source)).to_dict()
        with progress_bar(not as_json) as bar:
            seen = [0]

            def rows_done(done: int, total: int) -> None:
                if seen[0] == 0 and done == 0:
                    bar.phase("salvage", total)
                bar.advance(done - seen[0])
                seen[0] = done

            report = salvage(
                manifest.marks(),
                manifest.created_at,
                source,
                folder,
                include=include or target.salvage.include or None,
                exclude=[*(exclude or []), *target.salvage.exclude] or None,
                snapshot_id=snapshot_id,
                schema_diff=changes,
                progress=rows_done,
            )
    except (SalvageError, SchemaError) as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        emit_json(report.to_dict())
        return
    typer.echo(report.render())
    typer.echo(f"bundle: {report.out_dir}")


def _one_of(name: str, value: Path | None, old_name: str, old_value: Path | None) -> Path | None:
    """An option given by its name or by its old one (both: they must agree)."""
    if value is not None and old_value is not None and value != old_value:
        fail(f"{old_name} is the old name of {name}: give one of them", EXIT_USAGE)
    return value if value is not None else old_value


@app.command("show")
def show(
    incident_id: str = IncidentArg,
    as_json: bool = JsonOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Show an incident's salvage: tables, rows, the bundle, the schema diff, external effects.

    \b
    Examples:
      backout salvage show 20261204T143012Z-2.4.0
      backout salvage show latest --json"""
    incident_id, incident, folder = load_incident(_state_dir(config), incident_id)
    bundle = _bundle_dir(incident, folder)
    summary = _summary(bundle) if bundle is not None else None
    facts = _show_facts(incident_id, incident, bundle, summary)
    if as_json:
        emit_json(facts)
        return
    typer.echo(_render_show(facts, summary))


@app.command("replay")
def replay(
    incident_id: str = IncidentArg,
    renumber: bool = typer.Option(False, "--renumber", help="SQL: insert an added row whose integer key another "
                                  "row took since the rollback under a new key (only for tables no foreign key "
                                  "points at; the report lists old -> new)."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Path | None = ConfigOpt,
    deployment: str | None = DeploymentOpt,
) -> None:
    """Replay an incident's salvage into the running service (Engine API) or its brain (SQL).

    Rows already present are skipped, so replaying twice is safe. Rows changed since the
    snapshot are never overwritten: they are listed for review, as are added rows whose key
    another row took since the rollback (unless --renumber). A column the old version lacks
    is dropped from rows that left it empty; rows with a value there are listed. The profile's effects table (effects
    outside the brain) and migration ledgers are never replayed.
    Exit 0 when every row was replayed or already present, 1 when some could not be.

    \b
    Examples:
      backout salvage replay 20261204T143012Z-2.4.0 --dry-run
      backout salvage replay 20261204T143012Z-2.4.0 --yes"""
    incident_id, incident, folder = load_incident(_state_dir(config), incident_id)
    bundle = _bundle_dir(incident, folder)
    if bundle is None:
        fail(
            f"incident {incident_id} has no salvage (the brain was not restored): nothing to "
            "replay",
            EXIT_USAGE,
        )
    target = _target_for(config, deployment, incident)
    if dry_run:
        with handle_errors():
            report = _run_replay(target, bundle, dry_run=True, renumber=renumber)
        _print_report(report, as_json)
        return
    total = int(_summary(bundle).get("total") or 0)
    where = _service(target)[0] or target.brain
    confirm(f"replay the {total} salvaged rows of incident {incident_id} into {where}?", yes)
    with (
        handle_errors(),
        operation_lock(deployment_state(target.state_dir, target.deployment), "salvage replay"),
    ):
        report = _run_replay(target, bundle, dry_run=False, renumber=renumber)
    _print_report(report, as_json)
    if not report.complete:
        fail(_incomplete(report), EXIT_FAILED)


def _run_replay(target: Target, bundle: Path, dry_run: bool, renumber: bool = False) -> ReplayReport:
    url, key = _service(target)
    return replay_bundle(
        bundle, base_url=url, api_key=key, brain=target.brain, profile=target.profile, dry_run=dry_run,
        renumber=renumber,
    )


# -- incidents -----------------------------------------------------------------------------------


def _bundle_dir(incident: dict[str, Any], folder: Path) -> Path | None:
    """Where the incident's salvage bundle is; None when the rollback salvaged nothing."""
    info = incident.get("salvage")
    if not isinstance(info, dict):
        return None
    return Path(info["folder"]) if info.get("folder") else folder / "salvage"


def _summary(bundle: Path) -> dict[str, Any]:
    try:
        data = json.loads((bundle / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(
            f"the salvage bundle {bundle} cannot be read ({SUMMARY_FILE}: {exc}); it may have "
            "been moved: look in the incident folder",
            EXIT_USAGE,
        )
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        fail(f"{bundle / SUMMARY_FILE} is not a salvage summary", EXIT_USAGE)
    return data


def _target_for(config: Path | None, deployment: str | None, incident: dict[str, Any]) -> Target:
    """The incident's deployment (or --deployment); without a config it is named by its brain."""
    name = deployment or incident.get("deployment")
    if find_config(config) is None and name and Path(str(name)).is_absolute():
        return target_from(None, None, Path(str(name)))
    return target_from(config, str(name) if name else None, None)


def _service(target: Target) -> tuple[str | None, str | None]:
    """(base URL, API key): replay uses the service's import API when there is a health URL."""
    from backout.flows.check import base_url

    settings = target.settings
    try:
        key = settings.api_key.value() if settings and settings.api_key else None
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    return (base_url(target) if target.health_url else None), key


# -- output --------------------------------------------------------------------------------------


def _show_facts(
    incident_id: str, incident: dict[str, Any], bundle: Path | None, summary: dict[str, Any] | None
) -> dict[str, Any]:
    tables = (summary or {}).get("tables", [])
    effects_table = (incident.get("effects") or {}).get("table")
    effects: dict[str, Any] = next((t for t in tables if effects_table and t.get("table") == effects_table), {})
    snapshot = incident.get("snapshot") or {}
    kind = ((summary or {}).get("schema_diff") or {}).get("kind")
    return {
        "incident": incident_id,
        "deployment": incident.get("deployment"),
        "from_version": incident.get("from_version"),
        "to_version": incident.get("to_version"),
        "snapshot_id": snapshot.get("id") if isinstance(snapshot, dict) else None,
        "bundle": str(bundle) if bundle else None,
        "total": (summary or {}).get("total", 0),
        "tables": [
            {"table": t["table"], "added": t.get("added", 0), "changed": t.get("changed", 0)}
            for t in tables
            if t.get("added") or t.get("changed")
        ],
        "schema_diff_kind": kind,
        "effects": {"table": effects_table, "rows": int(effects.get("added", 0)) + int(effects.get("changed", 0))},
        "engine_bundle": bool((summary or {}).get("memory_import")),
        "replay_command": f"backout salvage replay {incident_id}" if bundle else None,
    }


def _render_show(facts: dict[str, Any], summary: dict[str, Any] | None) -> str:
    head = (
        f"incident {facts['incident']}: {or_word(facts['deployment'], 'deployment not recorded')}, "
        f"{or_word(facts['from_version'], '?')} -> {or_word(facts['to_version'], '?')}, "
        f"snapshot {or_word(facts['snapshot_id'])}"
    )
    if summary is None:
        return (
            head + "\nno salvage: the rollback did not restore the brain, so no row was displaced"
        )
    width = max([len("table"), *(len(t["table"]) for t in facts["tables"])])
    lines = [head, f"{'table':<{width}}  {'added':>7}  {'changed':>7}"]
    lines += [f"{t['table']:<{width}}  {t['added']:>7}  {t['changed']:>7}" for t in facts["tables"]]
    lines += [
        f"total: {facts['total']} rows in {facts['bundle']}"
        + (" (with memory-import.json for the Engine)" if facts["engine_bundle"] else ""),
        f"schema diff: {facts['schema_diff_kind'] or 'not recorded'}",
        (f"{facts['effects']['table']}: {facts['effects']['rows']} (effects outside the brain; never replayed)"
         if facts["effects"]["table"] else "external effects: the service's profile names no effects table"),
        f"replay: {facts['replay_command']} --dry-run, then without --dry-run",
    ]
    return "\n".join(lines)


def _print_report(report: ReplayReport, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
    else:
        typer.echo(report.render())


def _incomplete(report: ReplayReport) -> str:
    parts = [f"{t.table} {s.rows} ({s.reason})" for t in report.tables for s in t.skipped]
    return (
        f"{report.not_replayed} rows could not be replayed: {'; '.join(parts)}; the bundle "
        f"keeps them in {report.bundle}"
    )
