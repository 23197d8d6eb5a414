"""`backout salvage`: keep the bad window's rows, extracted from a newer (usually quarantined) brain."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from backout.brain.manifest import SnapshotStore, utcnow
from backout.brain.salvage import SalvageError, salvage
from backout.brain.schema import SchemaError, diff, stamp
from backout.cli.common import (BrainOpt, ConfigOpt, DeploymentOpt, DryRunOpt, IntoOpt, JsonOpt, emit_json, fail,
                                handle_errors, progress_bar, target_from)
from backout.errors import EXIT_USAGE

__all__ = ["command"]


def command(
    snapshot_id: str = typer.Option(..., "--snapshot", help="The snapshot the brain was (or will be) restored to."),
    source: Path = typer.Option(..., "--from", help="The newer brain, e.g. the quarantined one."),
    out: Optional[Path] = typer.Option(None, "--out", help="Bundle folder (default: <state>/salvage/<snapshot>-<time>)."),
    include: Optional[list[str]] = typer.Option(None, "--include", help="Only these tables (glob; repeatable)."),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="Skip these tables (glob; repeatable)."),
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
    into: Optional[Path] = IntoOpt,
) -> None:
    """Extract the rows written after a snapshot from a newer brain into a replayable bundle.

    One JSONL file per table, a summary with counts and the schema diff, and for the Engine a
    file that POST /memory/import accepts. Reads the newer brain only; writes only the bundle."""
    target = target_from(config, deployment, brain, into)
    store = SnapshotStore(target.snapshot_dir)
    with handle_errors():
        manifest = store.load(snapshot_id)
    folder = out or target.state_dir / "salvage" / f"{snapshot_id}-{utcnow().strftime('%Y%m%dT%H%M%SZ')}"
    if dry_run:
        plan = {"dry_run": True, "read": str(source), "since": manifest.created_at, "write": str(folder),
                "tables": sorted(manifest.tables)}
        emit_json(plan) if as_json else typer.echo(
            f"would read {source} for rows written after {manifest.created_at} (snapshot {snapshot_id}) "
            f"and write the bundle to {folder}; the brain is only read")
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
                manifest.marks(), manifest.created_at, source, folder,
                include=include or target.salvage.include or None,
                exclude=[*(exclude or []), *target.salvage.exclude] or None,
                snapshot_id=snapshot_id, schema_diff=changes,
                progress=rows_done,
            )
    except (SalvageError, SchemaError) as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        emit_json(report.to_dict())
        return
    typer.echo(report.render())
    typer.echo(f"bundle: {report.out_dir}")
