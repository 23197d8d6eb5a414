"""Service profiles: which one a deployment uses, detected from its database or named in backout.toml,
with the deployment's own overrides applied. See `backout.profiles.model` for what a profile holds."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from backout.profiles import alembic, django, engine, generic
from backout.profiles.model import Profile, SmokeRequest, merge

__all__ = ["PROFILES", "Detected", "Profile", "ProfileError", "SmokeRequest", "detect", "profile_named", "resolve"]

PROFILES: dict[str, Profile] = {p.name: p for p in (engine.PROFILE, alembic.PROFILE, django.PROFILE,
                                                    generic.PROFILE)}


class ProfileError(ValueError):
    """A profile name or override is wrong; the message says which and what to write instead."""


@dataclass(frozen=True)
class Detected:
    """A profile and how it was chosen, in words ("named in backout.toml", "detected: ...")."""

    profile: Profile
    how: str


def profile_named(name: str) -> Profile:
    """The built-in profile `name`; ProfileError listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown service profile {name!r}; known: {', '.join(PROFILES)}") from None


def _tables(brain: Path) -> set[str]:
    try:
        conn = sqlite3.connect(f"file:{brain}?mode=ro", uri=True)
    except sqlite3.Error:
        return set()
    try:
        return {r[0].lower() for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return set()
    finally:
        conn.close()


def detect(brain: Path) -> Detected:
    """The profile whose tables the database has (the most specific first); generic otherwise."""
    tables = _tables(brain) if brain.exists() else set()
    for profile in PROFILES.values():
        if profile.detect_tables and all(t.lower() in tables for t in profile.detect_tables):
            return Detected(profile, f"detected from the database: it has {', '.join(profile.detect_tables)}")
    why = "no database yet to detect from" if not brain.exists() else "no known migration ledger in the database"
    return Detected(generic.PROFILE, why)


def resolve(name: str | None, overrides: dict[str, Any], brain: Path) -> Detected:
    """The deployment's profile: `name` (or detected from `brain` when None) with `overrides` applied."""
    found = Detected(profile_named(name), "named in backout.toml") if name else detect(brain)
    if not overrides:
        return found
    try:
        profile = merge(found.profile, overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"profile.{where}: {first['msg']}") from None
    return Detected(profile, f"{found.how}, with {', '.join(sorted(overrides))} from backout.toml")
