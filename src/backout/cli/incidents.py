"""`backout incidents`: the incident records rollbacks keep, newest first; and the one place an incident id
(a whole id, a unique beginning of one, or `latest`) is resolved for every command that takes one."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from backout.cli.common import ConfigOpt, JsonOpt, emit_json, fail
from backout.config import ConfigError, find_config, load_config
from backout.errors import EXIT_USAGE

__all__ = ["INCIDENT_FILE", "LATEST", "incidents", "load_incident", "resolve_incident", "state_dir_of"]

INCIDENT_FILE = "incident.json"
LATEST = "latest"
_SHOWN = 8  # candidates named in an error


def state_dir_of(config: Path | None) -> Path:
    """The state folder from the config, or ./.backout without one (as resolve_target does)."""
    try:
        found = find_config(config)
        return load_config(found).state_dir.absolute() if found else Path(".backout").absolute()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def _root(state_dir: Path) -> Path:
    return state_dir / "incidents"


def _read(folder: Path) -> dict[str, Any] | str:
    """incident.json of one folder, or why it cannot be read."""
    try:
        record = json.loads((folder / INCIDENT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {INCIDENT_FILE}"
    except (OSError, ValueError) as exc:
        return f"{INCIDENT_FILE} is not readable JSON ({exc})"
    return record if isinstance(record, dict) else f"{INCIDENT_FILE} is not an incident record (a JSON object)"


def _when(record: dict[str, Any], name: str) -> datetime | None:
    """When the rollback was decided: incident.json's started_at, else the time an id begins with."""
    for text, parse in ((record.get("started_at"), datetime.fromisoformat),
                        (name[:16], lambda s: datetime.strptime(s, "%Y%m%dT%H%M%SZ"))):
        try:
            when = parse(str(text))
        except (TypeError, ValueError):
            continue
        return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    return None


def _iso(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _scan(state_dir: Path) -> tuple[list[tuple[str, dict[str, Any], datetime | None]], list[tuple[Path, str]]]:
    """(incidents as (id, record, time), newest first; folders whose record cannot be read, with why)."""
    root = _root(state_dir)
    if not root.is_dir():
        return [], []
    found, unreadable = [], []
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        record = _read(folder)
        if isinstance(record, str):
            unreadable.append((folder, record))
        else:
            found.append((folder.name, record, _when(record, folder.name)))
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    found.sort(key=lambda item: (item[2] or oldest, item[0]), reverse=True)
    return found, sorted(unreadable)


def _listed(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def resolve_incident(state_dir: Path, ref: str) -> str:
    """The incident id `ref` names: a whole id, `latest` (the newest), or a unique beginning of one; exit 2
    naming the candidates when there is none or more than one."""
    known = [name for name, _, _ in _scan(state_dir)[0]]  # newest first
    root = _root(state_dir)
    if ref in known:
        return ref
    if ref == LATEST:
        if not known:
            fail(f"no incidents in {root} yet, so `latest` names none: a rollback records one", EXIT_USAGE)
        return known[0]
    found = [name for name in known if ref and name.startswith(ref)]
    if len(found) == 1:
        return found[0]
    if found:
        fail(f"{ref!r} is the beginning of {len(found)} incident ids ({_listed(found)}); give more of the id, or "
             "`latest` for the newest", EXIT_USAGE)
    listed = f"known incidents, newest first: {_listed(known)}" if known else "none yet"
    fail(f"no incident {ref!r} in {root}; {listed} (`backout incidents` lists them)", EXIT_USAGE)


def load_incident(state_dir: Path, ref: str) -> tuple[str, dict[str, Any], Path]:
    """(the whole id, incident.json, its folder) of the incident `ref` names; exit 2 when there is none."""
    incident_id = resolve_incident(state_dir, ref)
    folder = _root(state_dir) / incident_id
    record = _read(folder)
    if isinstance(record, str):
        fail(f"{folder / INCIDENT_FILE}: {record}", EXIT_USAGE)
    return incident_id, record, folder


def _row(name: str, record: dict[str, Any], when: datetime | None, root: Path) -> dict[str, Any]:
    return {"id": name, "time": _iso(when), "deployment": record.get("deployment"),
            "from_version": record.get("from_version"), "to_version": record.get("to_version"),
            "layer": record.get("layer"), "outcome": record.get("outcome"), "reason": record.get("reason"),
            "finished_at": record.get("finished_at"), "folder": str(root / name)}


def incidents(
    limit: int = typer.Option(20, "--limit", "-n", min=1, metavar="N", help="Show the newest N incidents."),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = typer.Option(None, "--deployment", "-d", metavar="NAME",
                                             help="Only this deployment's incidents (default: every one's)."),
) -> None:
    """List the incidents rollbacks recorded, newest first: id, time (UTC), versions (from -> to), layer
    (image, or image and brain) and outcome.

    Every rollback, by `backout rollback` or by an upgrade or its watch window, keeps a folder in the state
    folder's incidents/ with its record (incident.json), the evidence, the postmortem and any salvage. Commands
    that take an incident id (`backout salvage show`, `backout salvage replay`) also take a unique beginning of
    one, or latest for the newest.

    \b
    Examples:
      backout incidents -n 5
      backout incidents --deployment engine --json"""
    state_dir = state_dir_of(config)
    root = _root(state_dir)
    found, unreadable = _scan(state_dir)
    if deployment is not None:
        found = [item for item in found if item[1].get("deployment") == deployment]
    rows = [_row(name, record, when, root) for name, record, when in found[:limit]]
    if as_json:
        emit_json({"folder": str(root), "incidents": rows, "more": len(found) - len(rows),
                   "unreadable": [{"folder": str(path), "problem": why} for path, why in unreadable]})
        return
    if not rows:
        of = f" of {deployment}" if deployment is not None else ""
        typer.echo(f"no incidents{of} in {root} yet: each rollback (`backout rollback`, or the one an upgrade or "
                   "its watch window runs) records one there")
    else:
        several = len({row["deployment"] for row in rows}) > 1
        width = max(len(row["id"]) for row in rows)
        versions = [f"{row['from_version'] or '?'} -> {row['to_version'] or '?'}" for row in rows]
        wide = max(len(v) for v in versions)
        outcome = max(len("OUTCOME"), *(len(row["outcome"] or "-") for row in rows)) if several else 0
        typer.echo(f"{'ID':<{width}}  {'TIME (UTC)':<20}  {'VERSIONS':<{wide}}  {'LAYER':<6}  {'OUTCOME':<{outcome}}"
                   + ("  DEPLOYMENT" if several else ""))
        for row, pair in zip(rows, versions):
            typer.echo(f"{row['id']:<{width}}  {row['time'] or '-':<20}  {pair:<{wide}}  {row['layer'] or '-':<6}  "
                       f"{row['outcome'] or '-':<{outcome}}" + (f"  {row['deployment'] or '-'}" if several else ""))
        if len(found) > len(rows):
            typer.echo(f"… and {len(found) - len(rows)} older (`--limit N` shows more)")
        typer.echo(f"each incident's folder is {root}/ID (incident.json, postmortem.md, diagnostics, salvage); "
                   "`backout salvage show ID` shows its salvage")
    for path, why in unreadable:
        typer.echo(f"unreadable: {path} ({why})")
