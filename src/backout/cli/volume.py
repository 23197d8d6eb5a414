"""`backout volume`: volume-level snapshots of the data volume holding the brain (local, EBS, GCP)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from backout.brain.restore import checkpoint_wal
from backout.cli.common import (ConfigOpt, DeploymentOpt, DryRunOpt, JsonOpt, YesOpt, confirm, emit_json, fail,
                                handle_errors, or_word, target_from)
from backout.cli.framework import Typer
from backout.config import Target
from backout.errors import EXIT_USAGE
from backout.flows.switch import brain_stamp
from backout.volumes import VolumeProvider

__all__ = ["app"]

app = Typer(help="Volume-level snapshots of the data volume holding the brain (local, ebs, gcp).\n\n"
            "\b\nExamples:\n  backout volume snapshot --version-running 2.3.1 --yes\n  backout volume list",
            no_args_is_help=True)


def _provider(target: Target) -> VolumeProvider:
    from backout.volumes.factory import volume_for

    provider = volume_for(target)
    if provider is None:
        fail(f"deployment {target.deployment} has no [deployments.{target.deployment}.volume] section", EXIT_USAGE)
    return provider


def _checkpoint(brain: Path) -> str:
    """Fold the WAL into the brain so the volume holds a usable brain (best effort while it serves)."""
    done = checkpoint_wal(brain)
    if done is None:
        return "no readable brain to checkpoint"
    return "WAL checkpointed" if done else "WAL checkpoint partial (writers active): drain first for certainty"


@app.command("snapshot")
def snapshot(
    version: Optional[str] = typer.Option(None, "--version-running", metavar="VERSION",
                                           help="Version running now (a tag)."),
    dry_run: bool = DryRunOpt,
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """Checkpoint the brain's WAL, then snapshot the whole volume, tagged with deployment, version and schema.

    \b
    Examples:
      backout volume snapshot --dry-run
      backout volume snapshot --version-running 2.3.1 --yes"""
    target = target_from(config, deployment, None)
    with handle_errors():
        provider = _provider(target)
        facts = provider.describe()
    if dry_run:
        emit_json({"dry_run": True, "volume": facts}) if as_json else typer.echo(
            f"would checkpoint {target.brain} and snapshot {provider.name} volume {or_word(facts.get('id'), '(id unknown)')}")
        return
    confirm(f"snapshot the {provider.name} volume {or_word(facts.get('id'), '(id unknown)')}?", yes)
    with handle_errors():
        said = _checkpoint(target.brain)
        stamp = brain_stamp(target) or {}
        snap = provider.snapshot({"deployment": target.deployment, "version": version or "unknown",
                                  "schema-head": str(stamp.get("head"))})
    emit_json({**snap.to_dict(), "checkpoint": said}) if as_json else typer.echo(
        f"{snap.id} ({snap.state}) of {snap.volume}; {said}")


@app.command("list")
def list_(
    as_json: bool = JsonOpt,
    config: Optional[Path] = ConfigOpt,
    deployment: Optional[str] = DeploymentOpt,
) -> None:
    """The deployment's volume snapshots, newest first.

    \b
    Examples:
      backout volume list
      backout volume list --deployment engine --json"""
    target = target_from(config, deployment, None)
    with handle_errors():
        snaps = _provider(target).snapshots(target.deployment)
    if as_json:
        emit_json([s.to_dict() for s in snaps])
        return
    for s in snaps:
        typer.echo(f"{s.id:<40} {s.created_at:<26} {s.state:<10} {s.tags.get('version', '-'):<10} "
                   f"restore point {s.tags.get('restore-point', '-')}")
    if not snaps:
        typer.echo("no volume snapshots yet")
