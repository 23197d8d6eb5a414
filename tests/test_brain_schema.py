"""Schema stamps, diffs and migration lint on real SQLite files, and the `backout schema` CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backout.brain.schema import SchemaError, SchemaStamp, diff, lint, stamp
from backout.cli.schema import app
from engine.brain import open_connection
from engine.releases import get_release
from engine.schema import migrate

runner = CliRunner()
MIGRATIONS = Path(__file__).resolve().parents[1] / "reference-engine" / "src" / "engine" / "migrations"


def _engine_brain(path: Path, *releases: str) -> Path:
    """A brain migrated by the reference Engine through each release in turn."""
    conn = open_connection(path)
    try:
        for release in releases:
            assert migrate(conn, get_release(release)).ok
    finally:
        conn.close()
    return path


def _brain(path: Path, script: str) -> Path:
    """A brain made by running `script` on a new file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(script)
    finally:
        conn.close()
    return path


@pytest.fixture(scope="module")
def brains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("brains")
    return {
        "2.3.1": _engine_brain(folder / "231.sqlite", "2.3.1"),
        "2.4.0": _engine_brain(folder / "240.sqlite", "2.4.0"),
        "2.4.0-again": _engine_brain(folder / "240b.sqlite", "2.4.0"),
        "2.3.1->2.4.0": _engine_brain(folder / "231-240.sqlite", "2.3.1", "2.4.0"),
        "2.4.1": _engine_brain(folder / "241.sqlite", "2.4.1"),
    }


# --- stamp -----------------------------------------------------------------------------------


def test_stamp_reads_the_engine_ledger(brains: dict[str, Path]) -> None:
    for release, head in [("2.3.1", "2"), ("2.4.0", "4"), ("2.4.1", "5")]:
        found = stamp(brains[release])
        assert (found.head, found.head_source) == (head, "schema_migrations")
        assert found.ledger == {
            "schema_migrations": head,
            "alembic_version": None,
            "user_version": int(head),
        }
    found = stamp(brains["2.4.1"])
    assert [c["name"] for c in found.tables["knowledge_store"]][2] == "fact"
    assert found.indexes["ix_knowledge_subject"]["columns"] == ["subject"]
    assert not found.indexes["ix_knowledge_subject"]["unique"]


def test_fingerprint_is_the_schema_not_the_file(brains: dict[str, Path]) -> None:
    prints = {name: stamp(path).fingerprint for name, path in brains.items()}
    assert prints["2.4.0"] == prints["2.4.0-again"] == prints["2.3.1->2.4.0"]
    assert len({prints["2.3.1"], prints["2.4.0"], prints["2.4.1"]}) == 3
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in prints.values())


def test_fingerprint_ignores_whitespace_case_comments_and_quoting(tmp_path: Path) -> None:
    a = _brain(
        tmp_path / "a.sqlite",
        "CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT DEFAULT 'A');CREATE INDEX ix ON t (y);",
    )
    b = _brain(
        tmp_path / "b.sqlite",
        'create   table "t"(\n  x integer primary key, -- id\n'
        "  `y` text default 'A'\n);\ncreate index ix on t(y);",
    )
    c = _brain(
        tmp_path / "c.sqlite",
        "CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT DEFAULT 'a');CREATE INDEX ix ON t (y);",
    )
    assert stamp(a).fingerprint == stamp(b).fingerprint
    assert diff(stamp(a), stamp(b)).identical
    assert stamp(a).fingerprint != stamp(c).fingerprint  # string literals keep their case


def test_stamp_round_trips_through_json(brains: dict[str, Path]) -> None:
    found = stamp(brains["2.4.1"])
    again = SchemaStamp.from_dict(json.loads(json.dumps(found.to_dict())))
    assert again == found
    assert diff(found, again).identical


def test_alembic_user_version_and_unversioned_brains(tmp_path: Path) -> None:
    alembic = (
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,"
        " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));"
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);"
    )
    old = _brain(
        tmp_path / "alembic1.sqlite",
        alembic + "INSERT INTO alembic_version VALUES ('ae1027a6acf');",
    )
    new = _brain(
        tmp_path / "alembic2.sqlite",
        alembic + "INSERT INTO alembic_version VALUES ('27c6a30d7c24');"
        "ALTER TABLE users ADD COLUMN name TEXT;",
    )
    s_old, s_new = stamp(old), stamp(new)
    assert (s_old.head, s_old.head_source) == ("ae1027a6acf", "alembic_version")
    assert s_old.ledger == {
        "schema_migrations": None,
        "alembic_version": "ae1027a6acf",
        "user_version": 0,
    }
    result = diff(s_old, s_new)
    assert result.kind == "additive" and [c.where for c in result.changes] == ["users.name"]

    v3 = _brain(
        tmp_path / "uv3.sqlite",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, tag TEXT);PRAGMA user_version = 3;",
    )
    v4 = _brain(
        tmp_path / "uv4.sqlite",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);PRAGMA user_version = 4;",
    )
    s3, s4 = stamp(v3), stamp(v4)
    assert (s3.head, s3.head_source, s3.user_version) == ("3", "user_version", 3)
    assert s3.ledger == {"schema_migrations": None, "alembic_version": None, "user_version": 3}
    result = diff(s3, s4)
    assert result.kind == "breaking"
    assert [(c.where, c.kind) for c in result.changes] == [("notes.tag", "breaking")]

    bare = stamp(_brain(tmp_path / "bare.sqlite", "CREATE TABLE t (x);"))
    assert (bare.head, bare.head_source) == (None, None)


def test_schema_migrations_with_text_versions_takes_the_highest(tmp_path: Path) -> None:
    # Rails and golang-migrate keep the version as the key; numeric order, not text order.
    path = _brain(
        tmp_path / "rails.sqlite",
        "CREATE TABLE schema_migrations (version VARCHAR NOT NULL PRIMARY KEY);"
        "INSERT INTO schema_migrations VALUES ('9'), ('20240102000000'), ('10');"
        "PRAGMA user_version = 2;",
    )
    found = stamp(path)
    assert (found.head, found.head_source) == ("20240102000000", "schema_migrations")
    assert found.ledger["user_version"] == 2


def test_stamp_accepts_an_open_connection(brains: dict[str, Path]) -> None:
    conn = sqlite3.connect(brains["2.4.1"])
    try:
        assert stamp(conn) == stamp(brains["2.4.1"])
    finally:
        conn.close()


def test_stamp_does_not_modify_the_brain(tmp_path: Path) -> None:
    path = _engine_brain(tmp_path / "brain.sqlite", "2.4.1")
    before_bytes, before_mtime = path.read_bytes(), path.stat().st_mtime_ns
    assert stamp(path).head == "5"
    assert path.read_bytes() == before_bytes
    assert path.stat().st_mtime_ns == before_mtime


def test_stamp_reads_a_wal_brain_another_connection_holds(tmp_path: Path) -> None:
    path = tmp_path / "brain.sqlite"
    writer = open_connection(path)
    try:
        migrate(writer, get_release("2.4.0"))
        migrate(writer, get_release("2.4.1"))  # committed to the WAL, not yet to the main file
        assert Path(f"{path}-wal").exists()
        writer.execute("BEGIN IMMEDIATE")  # and a write lock held while we stamp
        writer.execute("INSERT INTO engine_meta (key, value) VALUES ('pending', 'x')")
        main_bytes, main_mtime = path.read_bytes(), path.stat().st_mtime_ns
        found = stamp(path)
        assert (found.head, found.head_source) == ("5", "schema_migrations")
        assert "channel" in [c["name"] for c in found.tables["conversations"]]
        assert path.read_bytes() == main_bytes and path.stat().st_mtime_ns == main_mtime
        writer.execute("ROLLBACK")
    finally:
        writer.close()


@pytest.mark.parametrize("what", ["missing", "folder", "not-sqlite"])
def test_stamp_refuses_what_is_not_a_brain(tmp_path: Path, what: str) -> None:
    path = {"missing": tmp_path / "missing.sqlite", "folder": tmp_path}.get(
        what, tmp_path / "notes.txt"
    )
    if what == "not-sqlite":
        path.write_text("not a database at all\n" * 50)
    listing = sorted(tmp_path.iterdir())
    with pytest.raises(SchemaError, match="brain"):
        stamp(path)
    assert sorted(tmp_path.iterdir()) == listing  # nothing created, not even sidecars


# --- diff ------------------------------------------------------------------------------------


def test_diff_240_to_241_is_additive_only(brains: dict[str, Path]) -> None:
    result = diff(stamp(brains["2.4.0"]), stamp(brains["2.4.1"]))
    assert result.additive_only and not result.identical and result.kind == "additive"
    assert [(c.kind, c.object, c.where) for c in result.changes] == [
        ("additive", "column", "conversations.channel")
    ]


def test_diff_231_to_240_names_the_knowledge_store_rename(brains: dict[str, Path]) -> None:
    result = diff(stamp(brains["2.3.1"]), stamp(brains["2.4.0"]))
    assert not result.additive_only and result.kind == "breaking"
    assert [(c.object, c.table, c.name) for c in result.breaking] == [
        ("column", "knowledge_store", "fact")
    ]
    assert "content renamed to fact" in result.breaking[0].detail
    additive = {(c.object, c.where) for c in result.changes if c.kind == "additive"}
    assert additive == {
        ("column", "episodes.importance"),
        ("column", "knowledge_store.extractor"),
        ("index", "knowledge_store.ix_knowledge_subject"),
        ("table", "memory_tags"),
    }
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["kind"] == "breaking" and len(as_json["changes"]) == 5


def test_diff_of_the_same_release_is_identical(brains: dict[str, Path]) -> None:
    result = diff(stamp(brains["2.4.0"]), stamp(brains["2.3.1->2.4.0"]))
    assert result.identical and result.additive_only and result.kind == "none"


BASE = "CREATE TABLE a (id INTEGER PRIMARY KEY, x INTEGER, y TEXT);"

RULES = [
    # (id, old script, new script, kind of the diff, (kind, object, where, words in detail))
    (
        "new-table",
        BASE,
        BASE + "CREATE TABLE b (z TEXT);",
        "additive",
        ("additive", "table", "b", "new table"),
    ),
    (
        "new-index",
        BASE,
        BASE + "CREATE INDEX ix_a_y ON a(y);",
        "additive",
        ("additive", "index", "a.ix_a_y", "new index"),
    ),
    (
        "new-view",
        BASE,
        BASE + "CREATE VIEW v AS SELECT y FROM a;",
        "additive",
        ("additive", "view", "v", "new view"),
    ),
    (
        "new-trigger",
        BASE,
        BASE + "CREATE TRIGGER tr AFTER INSERT ON a BEGIN SELECT 1; END;",
        "additive",
        ("additive", "trigger", "a.tr", "new trigger"),
    ),
    (
        "new-nullable-column",
        BASE,
        BASE + "ALTER TABLE a ADD COLUMN z REAL;",
        "additive",
        ("additive", "column", "a.z", "nullable"),
    ),
    (
        "new-not-null-column-with-default",
        BASE,
        BASE + "ALTER TABLE a ADD COLUMN z TEXT NOT NULL DEFAULT 'k';",
        "additive",
        ("additive", "column", "a.z", "with default 'k'"),
    ),
    (
        "new-generated-column",
        BASE,
        BASE + "ALTER TABLE a ADD COLUMN z INTEGER GENERATED ALWAYS AS (x * 2);",
        "additive",
        ("additive", "column", "a.z", "generated"),
    ),
    (
        "unique-index-on-new-table",
        BASE,
        BASE + "CREATE TABLE b (z TEXT); CREATE UNIQUE INDEX ux ON b(z);",
        "additive",
        ("additive", "index", "b.ux", "new unique index"),
    ),
    (
        "dropped-plain-index",
        BASE + "CREATE INDEX ix_a_y ON a(y);",
        BASE,
        "additive",
        ("additive", "index", "a.ix_a_y", "readers do not need it"),
    ),
    (
        "column-order-only",
        BASE,
        "CREATE TABLE a (y TEXT, id INTEGER PRIMARY KEY, x INTEGER);",
        "none",
        None,
    ),
    (
        "dropped-table",
        BASE + "CREATE TABLE b (z TEXT);",
        BASE,
        "breaking",
        ("breaking", "table", "b", "dropped"),
    ),
    (
        "dropped-column",
        BASE,
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x INTEGER);",
        "breaking",
        ("breaking", "column", "a.y", "dropped"),
    ),
    (
        "renamed-table",
        BASE,
        "CREATE TABLE b (id INTEGER PRIMARY KEY, x INTEGER, y TEXT);",
        "breaking",
        ("breaking", "table", "b", "a renamed to b"),
    ),
    (
        "renamed-column",
        BASE,
        BASE + "ALTER TABLE a RENAME COLUMN y TO label;",
        "breaking",
        ("breaking", "column", "a.label", "y renamed to label"),
    ),
    (
        "changed-type",
        BASE,
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT, y TEXT);",
        "breaking",
        ("breaking", "column", "a.x", "type changed from INTEGER to TEXT"),
    ),
    (
        "not-null-added",
        BASE,
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x INTEGER NOT NULL, y TEXT);",
        "breaking",
        ("breaking", "column", "a.x", "NOT NULL added"),
    ),
    (
        "default-changed",
        BASE,
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x INTEGER DEFAULT 7, y TEXT);",
        "breaking",
        ("breaking", "column", "a.x", "default changed"),
    ),
    (
        "primary-key-changed",
        BASE,
        "CREATE TABLE a (id INTEGER, x INTEGER, y TEXT, PRIMARY KEY (id, x));",
        "breaking",
        ("breaking", "column", "a.x", "primary key changed"),
    ),
    (
        "new-not-null-column-without-default",
        BASE,
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x INTEGER, y TEXT, z TEXT NOT NULL);",
        "breaking",
        ("breaking", "column", "a.z", "without a default"),
    ),
    (
        "unique-index-on-existing-table",
        BASE,
        BASE + "CREATE UNIQUE INDEX ux ON a(y);",
        "breaking",
        ("breaking", "index", "a.ux", "can reject writes"),
    ),
    (
        "dropped-unique-index",
        BASE + "CREATE UNIQUE INDEX ux ON a(y);",
        BASE,
        "breaking",
        ("breaking", "index", "a.ux", "unique index dropped"),
    ),
    (
        "changed-view",
        BASE + "CREATE VIEW v AS SELECT y FROM a;",
        BASE + "CREATE VIEW v AS SELECT x FROM a;",
        "breaking",
        ("breaking", "view", "v", "definition changed"),
    ),
    (
        "dropped-view",
        BASE + "CREATE VIEW v AS SELECT y FROM a;",
        BASE,
        "breaking",
        ("breaking", "view", "v", "dropped"),
    ),
    (
        "changed-trigger",
        BASE + "CREATE TRIGGER tr AFTER INSERT ON a BEGIN SELECT 1; END;",
        BASE + "CREATE TRIGGER tr AFTER INSERT ON a BEGIN SELECT 2; END;",
        "breaking",
        ("breaking", "trigger", "a.tr", "definition changed"),
    ),
    (
        "column-constraint-added",
        BASE,
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x INTEGER, y TEXT CHECK (y <> ''));",
        "breaking",
        ("breaking", "column", "a.y", "changed constraint"),
    ),
    (
        "table-constraint-added",
        BASE,
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x INTEGER, y TEXT, UNIQUE (x, y));",
        "breaking",
        ("breaking", "table", "a", "changed constraint: added unique(x, y)"),
    ),
    (
        "without-rowid",
        "CREATE TABLE k (id TEXT PRIMARY KEY NOT NULL, v TEXT);",
        "CREATE TABLE k (id TEXT PRIMARY KEY NOT NULL, v TEXT) WITHOUT ROWID;",
        "breaking",
        ("breaking", "table", "k", "without rowid"),
    ),
]


@pytest.mark.parametrize(
    "old_sql,new_sql,kind,expected", [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_diff_rule(
    tmp_path: Path,
    old_sql: str,
    new_sql: str,
    kind: str,
    expected: tuple[str, str, str, str] | None,
) -> None:
    result = diff(
        stamp(_brain(tmp_path / "old.sqlite", old_sql)),
        stamp(_brain(tmp_path / "new.sqlite", new_sql)),
    )
    assert result.kind == kind, [c.to_dict() for c in result.changes]
    assert result.additive_only == (kind != "breaking")
    if expected is None:
        assert result.identical
        return
    change_kind, obj, where, words = expected
    found = [c for c in result.changes if (c.kind, c.object, c.where) == (change_kind, obj, where)]
    assert found, [c.to_dict() for c in result.changes]
    assert words in found[0].detail


# --- lint ------------------------------------------------------------------------------------


def test_lint_classifies_the_engine_migrations() -> None:
    report = lint(MIGRATIONS)
    assert [(f.file, f.kind) for f in report.files] == [
        ("0001_core.sql", "additive"),
        ("0002_mcp_calls.sql", "additive"),
        ("0003_episode_importance.sql", "additive"),
        ("0004_knowledge_store_rebuild.sql", "breaking"),
        ("0005_conversation_channel.sql", "additive"),
    ]
    rebuild = {(c.kind, c.object, c.where) for c in report.files[3].changes}
    assert rebuild == {
        ("breaking", "column", "knowledge_store.fact"),
        ("additive", "column", "knowledge_store.extractor"),
        ("additive", "index", "knowledge_store.ix_knowledge_subject"),
    }
    assert "content renamed to fact" in report.breaking[0].changes[1].detail
    assert not report.errors
    assert json.loads(json.dumps(report.to_dict()))["files"][3]["kind"] == "breaking"


def test_lint_from_a_base_brain(brains: dict[str, Path], tmp_path: Path) -> None:
    for name in (
        "0003_episode_importance.sql",
        "0004_knowledge_store_rebuild.sql",
        "0005_conversation_channel.sql",
    ):
        shutil.copy(MIGRATIONS / name, tmp_path / name)
    report = lint(tmp_path, base=brains["2.3.1"])
    assert [f.kind for f in report.files] == ["additive", "breaking", "additive"]
    result = runner.invoke(app, ["lint", str(tmp_path), "--base", str(brains["2.3.1"]), "--json"])
    assert result.exit_code == 3
    assert json.loads(result.stdout)["base"] == str(brains["2.3.1"])


def test_lint_reports_a_broken_file_and_goes_on_from_the_state_before_it(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x);\n")
    # The first statement succeeds, the second fails: nothing of the file may stay.
    (tmp_path / "0002_broken.sql").write_text(
        "-- half a migration\nCREATE TABLE b (x);\nCREAT TABLE c (y);\n"
    )
    (tmp_path / "0003_b.sql").write_text("CREATE TABLE b (y TEXT);\n")
    (tmp_path / "README.md").write_text("not a migration")
    report = lint(tmp_path)
    assert [(f.file, f.kind) for f in report.files] == [
        ("0001_a.sql", "additive"),
        ("0002_broken.sql", "error"),
        ("0003_b.sql", "additive"),
    ]
    error = report.files[1].error or ""
    assert "statement 2 (line 3" in error and "syntax error" in error
    assert report.errors == [report.files[1]]


def test_lint_refuses_a_folder_without_migrations(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no .sql files"):
        lint(tmp_path)
    with pytest.raises(SchemaError, match="no such folder"):
        lint(tmp_path / "nope")


# --- CLI -------------------------------------------------------------------------------------


def _one_line_error(result, words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("backout: error: ") and words in lines[0], lines


def test_cli_stamp(brains: dict[str, Path]) -> None:
    result = runner.invoke(app, ["stamp", str(brains["2.4.1"])])
    assert result.exit_code == 0
    assert "head: 5 (schema_migrations)" in result.stdout
    assert f"fingerprint: {stamp(brains['2.4.1']).fingerprint}" in result.stdout
    assert "tables: 14" in result.stdout
    result = runner.invoke(app, ["stamp", str(brains["2.4.1"]), "--json"])
    assert result.exit_code == 0
    assert SchemaStamp.from_dict(json.loads(result.stdout)) == stamp(brains["2.4.1"])


def test_cli_diff_exit_codes(brains: dict[str, Path]) -> None:
    same = runner.invoke(app, ["diff", str(brains["2.4.0"]), str(brains["2.4.0-again"])])
    assert (same.exit_code, same.stdout) == (0, "identical\n")
    additive = runner.invoke(app, ["diff", str(brains["2.4.0"]), str(brains["2.4.1"])])
    assert additive.exit_code == 0
    assert additive.stdout.splitlines() == [
        "additive  column   conversations.channel  new nullable column (TEXT)",
        "additive only: a reader of A can read B",
    ]
    breaking = runner.invoke(app, ["diff", str(brains["2.3.1"]), str(brains["2.4.0"])])
    assert breaking.exit_code == 3
    assert (
        "breaking  column   knowledge_store.fact  column content renamed to fact" in breaking.stdout
    )
    assert breaking.stdout.splitlines()[-1].startswith("breaking: 1 change")
    as_json = runner.invoke(app, ["diff", str(brains["2.3.1"]), str(brains["2.4.0"]), "--json"])
    assert as_json.exit_code == 3 and json.loads(as_json.stdout)["kind"] == "breaking"


def test_cli_refuses_missing_and_non_sqlite_files(brains: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    _one_line_error(runner.invoke(app, ["stamp", str(missing)]), "no such file")
    _one_line_error(
        runner.invoke(app, ["diff", str(brains["2.4.0"]), str(missing)]), "no such file"
    )
    assert not missing.exists()
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 200)
    _one_line_error(runner.invoke(app, ["stamp", str(text)]), "is not an SQLite database")
    _one_line_error(
        runner.invoke(app, ["diff", str(text), str(brains["2.4.0"])]), "is not an SQLite database"
    )
    _one_line_error(runner.invoke(app, ["lint", str(tmp_path)]), "no .sql files")
    _one_line_error(
        runner.invoke(app, ["lint", str(MIGRATIONS), "--base", str(text)]),
        "is not an SQLite database",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_lint_exit_codes(tmp_path: Path) -> None:
    result = runner.invoke(app, ["lint", str(MIGRATIONS)])
    assert result.exit_code == 3
    assert "0004_knowledge_store_rebuild.sql  breaking" in result.stdout
    assert "knowledge_store.fact  column content renamed to fact" in result.stdout

    good = tmp_path / "good"
    good.mkdir()
    (good / "0001.sql").write_text("CREATE TABLE a (x);")
    (good / "0002.sql").write_text("ALTER TABLE a ADD COLUMN y TEXT;")
    result = runner.invoke(app, ["lint", str(good), "--json"])
    assert result.exit_code == 0
    assert [f["kind"] for f in json.loads(result.stdout)["files"]] == ["additive", "additive"]

    (good / "0003.sql").write_text("ALTER TABLE a DROP COLUMN x;")
    (good / "0004.sql").write_text("ALTER TABLE nope ADD COLUMN z;")
    result = runner.invoke(app, ["lint", str(good)])
    assert result.exit_code == 1  # a failed file outranks a breaking one
    assert "no such table: nope" in result.stdout


@pytest.mark.parametrize(("change", "breaks"), [
    ("ALTER TABLE items ADD COLUMN owner TEXT NOT NULL DEFAULT 'x'", "none"),
    ("ALTER TABLE items ADD COLUMN note TEXT", "none"),
    ("CREATE UNIQUE INDEX items_name ON items (name)", "writes"),
    ("ALTER TABLE items RENAME COLUMN name TO title", "reads"),
    ("ALTER TABLE items DROP COLUMN name", "reads"),
    ("CREATE TRIGGER items_touch AFTER INSERT ON items BEGIN SELECT 1; END", "none"),
])
def test_what_a_change_breaks_reads_or_only_writes(tmp_path: Path, change: str, breaks: str) -> None:
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    for path in (old, new):
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        conn.close()
    conn = sqlite3.connect(new)
    conn.execute(change)
    conn.close()
    found = diff(stamp(old), stamp(new))
    assert [c.broken for c in found.changes] == [breaks], found.to_dict()
    assert (found.writes_only != []) == (breaks == "writes")
    assert found.to_dict()["changes"][0]["breaks"] == breaks


def test_a_new_not_null_column_without_a_default_breaks_only_writes(tmp_path: Path) -> None:
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    for path, extra in ((old, ""), (new, ", owner TEXT NOT NULL")):  # Django adds it by rebuilding the table
        conn = sqlite3.connect(path)
        conn.execute(f"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT{extra})")
        conn.close()
    found = diff(stamp(old), stamp(new))
    assert [(c.name, c.broken) for c in found.changes] == [("owner", "writes")]
    assert "inserts fail" in found.changes[0].detail
