"""Any service with a health URL and an SQLite file: any 2xx is healthy (a JSON `status` other than
"ok" is not), every request but probes counts, the head is whichever ledger the database has
(schema_migrations, alembic_version, django_migrations, or PRAGMA user_version), no effects table, and
salvaged rows go back with SQL."""

from __future__ import annotations

from backout.profiles.model import Profile

__all__ = ["PROFILE"]

PROFILE = Profile(name="generic", description="any service with a health URL and an SQLite file")
