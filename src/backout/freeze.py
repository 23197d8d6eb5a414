"""Frozen versions: a rolled-back version is refused by upgrades until someone unfreezes it, saying why.

Versions listed under `frozen` in backout.toml are frozen for good (edit the config to change that);
those frozen by a rollback ("source": "rollback") or by hand with `backout freeze` ("source": "manual")
live in the deployment's state folder, `frozen.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from backout.config import Target
from backout.errors import EXIT_REFUSED, EXIT_USAGE, BackoutError
from backout.fsutil import atomic_write_json, ensure_private_dir
from backout.history import deployment_state, now_iso

__all__ = ["FreezeSource", "frozen_versions", "freeze_version", "unfreeze_version", "refuse_if_frozen"]


def _path(target: Target) -> Path:
    return deployment_state(target.state_dir, target.deployment) / "frozen.json"


def frozen_versions(target: Target) -> dict[str, dict[str, Any]]:
    """Every frozen version of the deployment, with why, when and by what."""
    out: dict[str, dict[str, Any]] = {}
    if target.settings is not None:
        out.update({v: {"reason": "listed under `frozen` in backout.toml", "source": "config"}
                    for v in target.settings.frozen})
    try:
        out.update(json.loads(_path(target).read_text(encoding="utf-8")))
    except FileNotFoundError:
        pass
    except ValueError:
        raise BackoutError(f"{_path(target)} is corrupt; inspect it (it lists frozen versions)", EXIT_USAGE) from None
    return out


FreezeSource = Literal["manual", "rollback"]  # `backout freeze`, or a rollback freezing the version it left


def freeze_version(target: Target, version: str, reason: str, incident: str | None = None, *,
                   source: FreezeSource) -> dict[str, Any] | None:
    """Freeze `version`, recording who froze it (`source`); idempotent: a second freeze keeps the first one,
    which is returned (None when this call froze it)."""
    current = {k: v for k, v in frozen_versions(target).items() if v.get("source") != "config"}
    if version in current:
        return current[version]
    current[version] = {"reason": reason, "at": now_iso(), "incident": incident, "source": source}
    ensure_private_dir(_path(target).parent)
    atomic_write_json(_path(target), current)
    return None


def unfreeze_version(target: Target, version: str) -> dict[str, Any] | None:
    """Lift a freeze recorded by a rollback or by `backout freeze`; returns what it was, or None when `version`
    is not frozen (nothing to do)."""
    every = frozen_versions(target)
    entry = every.get(version)
    if entry is None:
        return None
    if entry.get("source") == "config":
        raise BackoutError(f"version {version} is frozen in backout.toml (`frozen`); remove it there", EXIT_REFUSED)
    rest = {k: v for k, v in every.items() if k != version and v.get("source") != "config"}
    atomic_write_json(_path(target), rest)
    return entry


def refuse_if_frozen(target: Target, version: str) -> None:
    """BackoutError (refused) when `version` is frozen, saying why and how to lift it."""
    entry = frozen_versions(target).get(version)
    if entry is None:
        return
    how = ("remove it from `frozen` in backout.toml" if entry.get("source") == "config"
           else f"`backout unfreeze {version} --reason TEXT` once it is fixed")
    raise BackoutError(f"version {version} is frozen for {target.deployment}: {entry.get('reason')}; {how}",
                       EXIT_REFUSED)
