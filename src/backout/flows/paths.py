"""Where each flow keeps its state in the deployment's folder (one place, so flows can see each other's)."""

from __future__ import annotations

from pathlib import Path

from backout.config import Target
from backout.history import deployment_state
from backout.journal import Journal

__all__ = ["rollback_journal", "upgrade_journal", "watch_state"]


def rollback_journal(target: Target) -> Path:
    """The journal of a rollback in progress."""
    return Journal.slot_path(deployment_state(target.state_dir, target.deployment), "rollback")


def upgrade_journal(target: Target) -> Path:
    """The journal of an upgrade in progress."""
    return Journal.slot_path(deployment_state(target.state_dir, target.deployment), "upgrade")


def watch_state(target: Target) -> Path:
    """The watch window of the last upgrade: version, previous version, until when, evals."""
    return deployment_state(target.state_dir, target.deployment) / "watch.json"
