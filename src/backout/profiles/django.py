"""A Django project on SQLite: `manage.py migrate` records its migrations in `django_migrations`.

Django does not refuse a newer database at boot; an older release fails on the first query that
touches a changed table ("no such column"), which is why its trial boots need smoke requests.
"""

from __future__ import annotations

from backout.profiles.model import LedgerRef, Profile, RefusalSigns

__all__ = ["PROFILE"]

PROFILE = Profile(
    name="django",
    description="a Django project (django_migrations)",
    refusal=RefusalSigns(log_patterns=[r"django\.db\.utils\.OperationalError: no such (table|column)",
                                       r"django\.db\.migrations\.exceptions\.\w+"]),
    ledger=LedgerRef(kind="django_migrations"),
    detect_tables=["django_migrations"],
    ignore_paths=["/health", "/healthz", "/metrics", "/static"],
)
