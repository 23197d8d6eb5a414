"""`backout history`: every change of version, with drain result, schema stamps and outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from backout.cli.common import BrainOpt, ConfigOpt, DeploymentOpt, JsonOpt, emit_json, or_word, target_from
from backout.ledger import Ledger

__all__ = ["history"]


def history(
    limit: int = typer.Option(20, "--limit", "-n", min=1, metavar="N", help="Show the newest N changes."),
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
    brain: Optional[Path] = BrainOpt,
) -> None:
    """List what ran when: time, kind (upgrade, promote, rollback, drill, manual, stop, verdict, unfreeze),
    from, to, outcome (an upgrade undone by a later rollback shows as rolled-back).

    \b
    Examples:
      backout history -n 5
      backout history --json"""
    target = target_from(config, deployment, brain)
    entries = Ledger(target).annotated()[-limit:]
    if as_json:
        emit_json(entries)
        return
    if not entries:
        typer.echo("no history yet")
        return
    typer.echo(f"{'AT':<24} {'KIND':<9} {'FROM':<14} {'TO':<14} {'OUTCOME':<11} DETAIL")
    for e in entries:
        detail = "; ".join(part for part in (_drain(e), _schema(e), e.get("detail")) if part)
        typer.echo(f"{e['at'][:23]:<24} {e['kind']:<9} {str(e.get('from_version') or '-'):<14} "
                   f"{str(e.get('to_version') or '-'):<14} {e['outcome']:<11} {detail}")


def _drain(entry: dict[str, Any]) -> str:
    drain = entry.get("drain") or {}
    if not drain.get("stopped"):
        return ""
    seconds = f" in {drain['seconds']:.1f}s" if isinstance(drain.get("seconds"), (int, float)) else ""
    return f"drain {'clean' if drain.get('clean') else 'FORCED'}{seconds}"


def _schema(entry: dict[str, Any]) -> str:
    """'schema 2 -> 4'; '(none)' where the brain had no migration recorded (or no brain yet)."""
    if not entry.get("schema_after"):
        return ""
    before, after = ((entry.get(key) or {}).get("head") for key in ("schema_before", "schema_after"))
    return f"schema {or_word(before, '(none)')} -> {or_word(after, '(none)')}"
