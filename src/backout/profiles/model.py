"""What backout needs to know about a service, in one value: a service profile.

Everything service-specific sits behind this model — how health is judged, which requests count and
how to read them, the API-key header, the smoke requests of a trial boot, the signs that a version
refuses a database, where the migration head is recorded, which table holds effects outside the
database, and how salvaged rows go back. The generic code reads only a `Profile`; the profiles
themselves (`engine`, `alembic`, `django`, `generic`) are plain values in their own modules, and a
deployment's `[deployments.NAME.profile]` table overrides any field of the one it names.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["HealthRule", "LedgerRef", "LogFormat", "Profile", "PrometheusQueries", "RefusalSigns", "SmokeRequest"]

LogFormat = Literal["auto", "json", "common", "combined", "uvicorn", "gunicorn"]
LEDGER_KINDS = ("schema_migrations", "alembic_version", "django_migrations", "user_version")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthRule(_Model):
    """How one answer of the health URL is judged: a 2xx, and (when `status_field` is set) that field of
    the JSON body in `ok_values` — a body without the field counts as healthy unless `status_required`."""

    status_field: str | None = "status"
    ok_values: list[str] = ["ok"]
    status_required: bool = False
    subsystems_field: str | None = None  # a JSON object of subsystem -> "ok"/other, listed when failing


class SmokeRequest(_Model):
    """One request a trial boot makes once health is ok: health alone may pass on a database the version
    cannot use. The trial runs on a throwaway copy, so writes cost nothing."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str  # e.g. "/items" (with a query string if needed)
    body: dict[str, Any] | list[Any] | None = None  # sent as JSON
    expect_status: list[int] = [200]
    json_path: str | None = None  # dotted path that must exist in the JSON answer, e.g. "items.0.id"
    tables: list[str] = []  # the tables this request reads or writes (the layer choice trusts it for them)

    @field_validator("expect_status", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"a smoke request's path starts with '/', e.g. '/items' (got {value!r})")
        return value

    def label(self) -> str:
        """"GET /items", for reports."""
        return f"{self.method} {self.path}"


class RefusalSigns(_Model):
    """Signs that a version refuses a database (waiting will not help; an older version needs an older
    database): an error code in a JSON answer, a line in the service's log, or an exit during boot with
    the database named in its last log lines."""

    response_codes: list[str] = []  # prefixes of `error.code` (or `code`) in a JSON answer
    log_patterns: list[str] = []  # regular expressions matched against each log line
    exit_naming_database: bool = True  # a non-zero exit during boot whose last lines name the database file

    @field_validator("log_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"log pattern {pattern!r} is not a regular expression: {exc}") from None
        return patterns


class LedgerRef(_Model):
    """Where a migration head is recorded: one of the known ledgers ("auto": whichever the database has,
    in the order schema_migrations, alembic_version, django_migrations, PRAGMA user_version)."""

    kind: Literal["auto", "schema_migrations", "alembic_version", "django_migrations", "user_version"] = "auto"

    def tables(self) -> tuple[str, ...]:
        """The tables this ledger lives in (never salvaged back: the live database's migrations decide)."""
        return tuple(k for k in LEDGER_KINDS if k != "user_version" and (self.kind in ("auto", k)))


class PrometheusQueries(_Model):
    """The service's metrics: PromQL for the verdict's `prometheus` source (read as cumulative counters),
    and the metric names a `scrape` of its /metrics reads."""

    total: str | None = None
    errors: str | None = None
    latency: str | None = None  # histogram buckets in seconds
    requests_metric: str = "http_requests_total"  # a counter with `status` (and `path`) labels
    duration_metric: str = "http_request_duration_seconds"  # a histogram (its _bucket series)


class Profile(_Model):
    """Everything service-specific; see the module docstring."""

    name: str
    description: str = ""
    health: HealthRule = HealthRule()
    api_key_header: str = "Authorization"
    api_key_prefix: str = "Bearer "  # put before the key in that header ("" for a bare key)
    request_path: str | None = None  # which requests count for errors and latency: a path, or a prefix
    # ending in "*" ("/api/*"); None: every one but ignore_paths
    ignore_paths: list[str] = ["/health", "/healthz", "/metrics"]  # never counted (probes, scrapes)
    log_format: LogFormat = "auto"
    prometheus: PrometheusQueries = PrometheusQueries()
    smoke: list[SmokeRequest] = []
    refusal: RefusalSigns = RefusalSigns()
    ledger: LedgerRef = LedgerRef()
    effects_table: str | None = None  # rows that record effects outside the database (listed, never replayed)
    replay: Literal["sql", "engine-import"] = "sql"
    import_path: str | None = None  # the service's import endpoint, for replay = "engine-import"
    detect_tables: list[str] = []  # tables whose presence in a database says "this profile"
    turn_path: str | None = None  # the request a regression test repeats for failed tasks (None: none)
    traffic: Literal["none", "engine"] = "none"  # what the drill sends: the Engine's turns, or nothing

    def counts(self, path: str | None) -> bool:
        """Whether a request to `path` counts for the verdict."""
        path = path or ""
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.ignore_paths):
            return False
        if self.request_path is None:
            return True
        if self.request_path.endswith("*"):  # a prefix
            return path.startswith(self.request_path[:-1])
        return path == self.request_path

    def api_headers(self, key: str | None) -> dict[str, str]:
        """The header that carries the service's API key (none without a key)."""
        return {self.api_key_header: f"{self.api_key_prefix}{key}"} if key else {}

    def refusal_code(self, body: Any) -> str | None:
        """The error code of a JSON answer that shows a refused database, or None."""
        if not isinstance(body, dict) or not self.refusal.response_codes:
            return None
        error = body.get("error")
        code = error.get("code") if isinstance(error, dict) else body.get("code")
        if code and any(str(code).startswith(prefix) for prefix in self.refusal.response_codes):
            return str(code)
        return None

    def refusal_line(self, lines: list[str], database: str | None = None,
                     exited: bool = False) -> str | None:
        """The log line that shows the version refused the database, or None. With `exited` (the process
        ended non-zero during boot), a last line naming the database file counts too."""
        for line in lines:
            if any(re.search(p, line) for p in self.refusal.log_patterns):
                return line.strip()
        if exited and database and self.refusal.exit_naming_database:
            for line in reversed(lines[-20:]):  # the last word on it is the likeliest reason
                if database in line:
                    return line.strip()
        return None

    def ledger_tables(self) -> tuple[str, ...]:
        """Migration ledger tables of this service (never replayed)."""
        return tuple(dict.fromkeys(LedgerRef().tables() + self.ledger.tables()))


def merge(base: Profile, overrides: dict[str, Any]) -> Profile:
    """`base` with the fields given in `overrides` (a deployment's [profile] table) replaced; nested tables
    (health, refusal, ledger, prometheus) are merged field by field."""
    data = base.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Profile.model_validate(data)

