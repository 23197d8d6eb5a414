"""The third-party test apps as data: how to start each version, what it needs, and what each
upgrade pair should lead to. Standard library only, so tests and tools can import it anywhere.

Two real apps, each version a self-contained folder put on PYTHONPATH:

- `django_app` (package `djitems`): Django 5.2, one model, `migrate` at boot, ledger `django_migrations`.
- `flask_alembic_app` (package `flitems`): Flask + SQLAlchemy 2.0, `alembic upgrade head` at boot,
  ledger `alembic_version`.

Both serve with gunicorn (one sync worker) on 127.0.0.1 and exit 0 on SIGTERM. Start one with
`version.command(python, brain, port)` and `version.environ()`; `python` is the venv's interpreter
(`try_apps.ensure_venv()`). The upgrade pairs are in PAIRS (see README.md beside this file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["ACCESS_LOG_FORMAT", "ACCESS_LOG_RE", "APPS_DIR", "OldOnMigrated", "PAIRS", "REQUIREMENTS",
           "REQUIREMENTS_FILE", "Request", "UpgradePair", "VERSIONS", "AppVersion", "pair", "version"]

APPS_DIR = Path(__file__).resolve().parent
REQUIREMENTS_FILE = APPS_DIR / "requirements.txt"
REQUIREMENTS = tuple(line.strip() for line in REQUIREMENTS_FILE.read_text().splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))

# gunicorn's default access log (Apache "combined"), printed on stdout, one line per request:
#   127.0.0.1 - - [04/Dec/2026:18:59:17 +0000] "POST /items HTTP/1.1" 201 59 "-" "curl/7.88.1"
# Everything else (gunicorn's own lines, migrations, app errors with tracebacks) goes to stderr as
#   [2026-12-04 18:59:12 +0000] [8635] [INFO] Starting gunicorn 26.2.0
#   [2026-12-04 18:59:12 +0000] [8635] [INFO] flitems: flitems 1.0: serving ... (logger name first)
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
ACCESS_LOG_RE = (r'^(?P<host>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" '
                 r'(?P<status>\d{3}) (?P<bytes>\S+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$')


@dataclass(frozen=True)
class Request:
    """One HTTP request against a running version (body sent as JSON)."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    expect_status: int = 200


@dataclass(frozen=True)
class AppVersion:
    app: str  # "django_app" | "flask_alembic_app"
    version: str  # "1.0"
    module: str  # the package run with `python -m`
    framework: str
    ledger_table: str  # where the migration head is recorded
    ledger_query: str  # SQL giving the newest ledger entry
    schema_head: str  # the newest ledger entry once this version has migrated
    migration: str  # what this version's own newest migration does
    health_path: str = "/health"
    write: Request = Request("POST", "/items", {"name": "smoke"}, 201)
    read: Request = Request("GET", "/items", None, 200)
    migrates_at_boot: bool = True  # `serve` migrates first; `migrate` alone is migrate_template

    @property
    def key(self) -> str:
        return f"{self.app}@{self.version}"

    @property
    def source_dir(self) -> Path:
        """The folder to put on PYTHONPATH (holds the package, and manage.py for Django)."""
        return APPS_DIR / self.app / ("v" + self.version.replace(".", "_"))

    @property
    def argv_template(self) -> tuple[str, ...]:
        return ("{python}", "-m", self.module, "serve", "--db", "{brain}", "--port", "{port}")

    @property
    def migrate_template(self) -> tuple[str, ...]:
        return ("{python}", "-m", self.module, "migrate", "--db", "{brain}")

    def command(self, python: str | Path, brain: str | Path, port: int) -> list[str]:
        """The argv that starts this version: migrate `brain`, then serve it on 127.0.0.1:`port`."""
        values = {"python": str(python), "brain": str(brain), "port": str(port)}
        return [part.format(**values) for part in self.argv_template]

    def migrate_command(self, python: str | Path, brain: str | Path) -> list[str]:
        values = {"python": str(python), "brain": str(brain)}
        return [part.format(**values) for part in self.migrate_template]

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for the process: `base` (default: none) plus PYTHONPATH = this version's folder.
        No bytecode is written into the source tree."""
        env = dict(base or {})
        env.update({"PYTHONPATH": str(self.source_dir), "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONUNBUFFERED": "1"})
        env.pop("DJANGO_SETTINGS_MODULE", None)
        return env


_DJANGO = dict(app="django_app", module="djitems", framework="Django 5.2 + gunicorn",
               ledger_table="django_migrations",
               ledger_query="SELECT name FROM django_migrations WHERE app = 'djitems' ORDER BY id DESC LIMIT 1")
_ALEMBIC = dict(app="flask_alembic_app", module="flitems", framework="Flask 3.1 + SQLAlchemy 2.0 + alembic + gunicorn",
                ledger_table="alembic_version", ledger_query="SELECT version_num FROM alembic_version")

VERSIONS: dict[str, AppVersion] = {v.key: v for v in [
    AppVersion(version="1.0", schema_head="0001_initial", migration="creates djitems_item(id, name, created)",
               **_DJANGO),
    AppVersion(version="2.0", schema_head="0002_item_note",
               migration="adds the nullable column djitems_item.note (additive)", **_DJANGO),
    AppVersion(version="3.0", schema_head="0003_item_owner",
               migration="adds djitems_item.owner NOT NULL; its default ('anonymous') is Python-only, "
                         "so the table has no database default", **_DJANGO),
    AppVersion(version="1.0", schema_head="3f2a9c1b7d10", migration="creates items(id, name, created)",
               **_ALEMBIC),
    AppVersion(version="2.0", schema_head="9b8e4d2c6a51",
               migration="renames items.name to items.title (forward-only: its downgrade raises)", **_ALEMBIC),
]}


def version(app: str, number: str) -> AppVersion:
    return VERSIONS[f"{app}@{number}"]


@dataclass(frozen=True)
class OldOnMigrated:
    """What the OLD version does when started again on the database the NEW version migrated."""

    boots: bool
    exit_code: int | None = None  # when it does not boot
    health_ok: bool | None = None  # None: not asked (it did not boot)
    read_ok: bool | None = None
    write_ok: bool | None = None
    log_signs: tuple[str, ...] = ()  # regular expressions found in its log
    names_database_last_lines: bool = False  # its last log lines name the SQLite file


@dataclass(frozen=True)
class UpgradePair:
    name: str
    old: AppVersion
    new: AppVersion
    exercises: str
    expected_layer: Literal["image", "brain"]
    why: str
    smoke_needed: bool  # health alone would call the old version usable; a smoke request tells
    smoke: Request | None  # the request that tells (a trial boot of OLD on a copy of the brain)
    old_on_migrated: OldOnMigrated
    notes: tuple[str, ...] = field(default=())


PAIRS: tuple[UpgradePair, ...] = (
    UpgradePair(
        name="alembic-refuses-at-boot",
        old=version("flask_alembic_app", "1.0"), new=version("flask_alembic_app", "2.0"),
        exercises="pair 1: the migrated database is unreadable for the old version, which refuses at boot",
        expected_layer="brain",
        why="2.0's forward-only migration renames items.name to items.title and moves alembic_version to "
            "9b8e4d2c6a51, a revision 1.0 does not know: 1.0's `alembic upgrade head` at boot fails with "
            "alembic's \"Can't locate revision identified by '9b8e4d2c6a51'\" and it exits 3 naming the "
            "database (even without that check, its SELECT of items.name would fail). Only the pre-upgrade "
            "brain (restored, bad-window rows salvaged) lets 1.0 run again.",
        smoke_needed=False, smoke=None,
        old_on_migrated=OldOnMigrated(
            boots=False, exit_code=3,
            log_signs=(r"Can't locate revision identified by '9b8e4d2c6a51'", r"alembic\.util\.exc\.CommandError"),
            names_database_last_lines=True),
    ),
    UpgradePair(
        name="django-write-breaks",
        old=version("django_app", "2.0"), new=version("django_app", "3.0"),
        exercises="pair 2: the old version boots and is healthy on the migrated database but its first insert fails",
        expected_layer="brain",
        why="3.0 adds djitems_item.owner NOT NULL with no database default. 2.0's `migrate` at boot ignores "
            "the applied 0003 it does not know, /health and GET /items answer 200, but every POST /items is an "
            "INSERT without owner: IntegrityError 'NOT NULL constraint failed: djitems_item.owner', HTTP 500. "
            "Rolling back the image alone leaves a service that cannot write; the brain must go back too.",
        smoke_needed=True, smoke=Request("POST", "/items", {"name": "smoke"}, 201),
        old_on_migrated=OldOnMigrated(
            boots=True, health_ok=True, read_ok=True, write_ok=False,
            log_signs=(r"django\.db\.utils\.IntegrityError: NOT NULL constraint failed: djitems_item\.owner",
                       r'"POST /items HTTP/1\.1" 500 ')),
        notes=("A read smoke (GET /items) passes: only a write smoke catches it.",
               "backout's django profile matches 'OperationalError: no such (table|column)'; this failure is an "
               "IntegrityError, so that refusal pattern does not see it — the smoke request does."),
    ),
    UpgradePair(
        name="django-additive",
        old=version("django_app", "1.0"), new=version("django_app", "2.0"),
        exercises="pair 3: purely additive migration; the old version reads and writes the migrated database",
        expected_layer="image",
        why="2.0 only adds the nullable column djitems_item.note. 1.0 names its columns in SELECT and INSERT, "
            "so it reads and writes the migrated table (note stays NULL); its `migrate` ignores the applied "
            "0002 it does not know. Rolling back the image keeps every row written under 2.0.",
        smoke_needed=False, smoke=Request("POST", "/items", {"name": "smoke"}, 201),
        old_on_migrated=OldOnMigrated(boots=True, health_ok=True, read_ok=True, write_ok=True),
        notes=("The smoke request passes: it confirms that the image layer is enough.",),
    ),
)


def pair(name: str) -> UpgradePair:
    return next(p for p in PAIRS if p.name == name)
