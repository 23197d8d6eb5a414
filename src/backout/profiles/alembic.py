"""A web app whose SQLite schema is migrated by alembic (Flask, FastAPI, ... with SQLAlchemy).

Its head is the `alembic_version` table; an older release that meets a newer head fails with
alembic's own "Can't locate revision identified by ..." (at boot, when the app checks its head, or in
`alembic upgrade`). Its access log is whatever its server writes (uvicorn, gunicorn, common format).
"""

from __future__ import annotations

from backout.profiles.model import LedgerRef, Profile, RefusalSigns

__all__ = ["PROFILE"]

PROFILE = Profile(
    name="alembic",
    description="an SQLAlchemy app migrated by alembic (alembic_version)",
    refusal=RefusalSigns(log_patterns=[r"Can't locate revision identified by",
                                       r"alembic\.util\.exc\.CommandError",
                                       r"sqlite3\.OperationalError: no such (table|column)"]),
    ledger=LedgerRef(kind="alembic_version"),
    detect_tables=["alembic_version"],
)
