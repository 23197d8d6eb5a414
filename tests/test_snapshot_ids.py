"""Snapshot ids wherever one is taken: the whole id, a unique beginning of one, or `latest`; an ambiguous
beginning or an unknown id is refused with exit 2, naming the candidates or where to look."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from rollback_setup import ENV, init_process


def _brain(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('kept')")
    conn.commit()
    conn.close()
    return path


def _shortest_unique(ids: list[str], wanted: str) -> str:
    """The shortest beginning of `wanted` that no other id shares."""
    return next(wanted[:n] for n in range(1, len(wanted) + 1)
                if not any(other.startswith(wanted[:n]) for other in ids if other != wanted))


def _common(ids: list[str]) -> str:
    return os.path.commonprefix(ids)


@pytest.fixture
def three(tmp_path: Path) -> tuple[list[str], list[str]]:
    """A brain with three snapshots (oldest first), and the --brain/--into arguments naming them."""
    where = ["--brain", str(_brain(tmp_path / "brain.sqlite")), "--into", str(tmp_path / "snaps")]
    ids = [backout_json("snapshot", "create", *where, cwd=tmp_path)["id"] for _ in range(3)]
    return ids, where


def test_show_verify_pin_unpin_restore_take_a_unique_beginning(three: tuple[list[str], list[str]],
                                                               tmp_path: Path) -> None:
    ids, where = three
    middle = ids[1]
    short = _shortest_unique(ids, middle)
    assert len(short) < len(middle)

    out = backout("snapshot", "show", short, *where, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["id", middle]
    assert backout_json("snapshot", "show", short, *where, cwd=tmp_path)["id"] == middle

    out = backout("snapshot", "verify", short, *where, cwd=tmp_path)
    assert out.returncode == 0 and f"snapshot {middle}: verified" in out.stdout, out.stdout + out.stderr

    out = backout("snapshot", "pin", short, *where, cwd=tmp_path)
    assert (out.returncode, out.stdout) == (0, f"snapshot {middle} pinned\n"), out.stderr
    assert backout_json("snapshot", "show", middle, *where, cwd=tmp_path)["pinned"]
    out = backout("snapshot", "unpin", short, "--yes", *where, cwd=tmp_path)
    assert (out.returncode, out.stdout) == (0, f"snapshot {middle} unpinned\n"), out.stderr
    assert not backout_json("snapshot", "show", middle, *where, cwd=tmp_path)["pinned"]

    out = backout("snapshot", "restore", short, "--dry-run", *where, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith(f"restore snapshot {middle} ("), out.stdout + out.stderr

    out = backout("salvage", "extract", "--snapshot", short, "--from", where[1], "--brain", where[1],
                  "--snapshot-dir", where[3], "--dry-run", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Path(json.loads(out.stdout)["write"]).name.startswith(f"{middle}-")  # named after the whole id


def test_latest_names_the_newest(three: tuple[list[str], list[str]], tmp_path: Path) -> None:
    ids, where = three
    assert backout_json("snapshot", "show", "latest", *where, cwd=tmp_path)["id"] == ids[-1]
    out = backout("snapshot", "pin", "latest", *where, cwd=tmp_path)
    assert out.stdout == f"snapshot {ids[-1]} pinned\n", out.stderr
    out = backout("snapshot", "verify", "latest", *where, cwd=tmp_path)
    assert out.returncode == 0 and f"snapshot {ids[-1]}: verified" in out.stdout

    empty = ["--brain", where[1], "--into", str(tmp_path / "none-yet")]
    out = backout("snapshot", "show", "latest", *empty, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "no snapshot of" in out.stderr and "`latest` names none" in out.stderr
    assert "backout snapshot create" in out.stderr and len(out.stderr.splitlines()) == 1


def test_an_ambiguous_beginning_lists_the_candidates_and_changes_nothing(three: tuple[list[str], list[str]],
                                                                         tmp_path: Path) -> None:
    ids, where = three
    common = _common(ids)
    assert len(common) >= 8  # the same day at least
    for command in (["show", common], ["pin", common], ["unpin", common, "--yes"], ["verify", common],
                    ["restore", common, "--yes", "--service-stopped"]):
        out = backout("snapshot", *command, *where, cwd=tmp_path)
        assert out.returncode == 2 and out.stdout == "", (command, out.stdout, out.stderr)
        said = out.stderr.strip()
        assert said.startswith(f"backout: error: {common!r} is the beginning of 3 snapshot ids (")
        assert all(sid in said for sid in ids) and "give more of the id" in said and "latest" in said
        assert len(said.splitlines()) == 1
    assert not any(s["pinned"] for s in backout_json("snapshot", "list", *where, cwd=tmp_path)["snapshots"])
    assert not (tmp_path / ".backout" / "quarantine").exists()  # nothing was restored


def test_an_unknown_id_or_beginning_says_where_to_look(three: tuple[list[str], list[str]], tmp_path: Path) -> None:
    ids, where = three
    snaps = where[3]
    for ref, said in (("19990101T000000Z-abcdef", f"no snapshot 19990101T000000Z-abcdef in {snaps}; "
                                                  "`backout snapshot list` shows them"),
                      ("19990101", f"no snapshot 19990101… in {snaps}; `backout snapshot list` shows them")):
        for command in (["show", ref], ["verify", ref], ["pin", ref], ["restore", ref, "--dry-run"]):
            out = backout("snapshot", *command, *where, cwd=tmp_path)
            assert (out.returncode, out.stdout, out.stderr) == (2, "", f"backout: error: {said}\n"), command
    out = backout("snapshot", "show", "../../etc/passwd", *where, cwd=tmp_path)  # never a path
    assert out.returncode == 2 and "is not a snapshot id" in out.stderr and "`latest`" in out.stderr


def test_a_beginning_only_matches_this_brains_snapshots(tmp_path: Path) -> None:
    """A snapshot folder may be shared: another brain's snapshots are no candidates."""
    snaps = str(tmp_path / "snaps")
    mine = ["--brain", str(_brain(tmp_path / "mine.sqlite")), "--into", snaps]
    theirs = ["--brain", str(_brain(tmp_path / "theirs.sqlite")), "--into", snaps]
    own = backout_json("snapshot", "create", *mine, cwd=tmp_path)["id"]
    other = backout_json("snapshot", "create", *theirs, cwd=tmp_path)["id"]
    common = _common([own, other])
    assert backout_json("snapshot", "show", common, *mine, cwd=tmp_path)["id"] == own
    assert backout_json("snapshot", "show", common, *theirs, cwd=tmp_path)["id"] == other
    assert backout_json("snapshot", "show", "latest", *mine, cwd=tmp_path)["id"] == own


@pytest.fixture
def deployment(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = init_process(tmp_path)
    yield config
    backout("stop", "--yes", "--config", str(config), env=ENV)


def test_rollback_snapshot_takes_a_beginning_and_latest(deployment: Path) -> None:
    cfg = ["--config", str(deployment)]
    assert backout_json("switch", "2.3.0", "--yes", *cfg, env=ENV)["healthy"]
    ids = [backout_json("snapshot", "create", *cfg, env=ENV)["id"] for _ in range(2)]
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]

    out = backout("rollback", "--dry-run", "--json", "--to", "2.3.0", "--snapshot", _shortest_unique(ids, ids[0]),
                  *cfg, env=ENV)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["plan"]["snapshot"]["id"] == ids[0]
    out = backout("rollback", "--dry-run", "--json", "--to", "2.3.0", "--snapshot", "latest", *cfg, env=ENV)
    assert out.returncode == 0 and json.loads(out.stdout)["plan"]["snapshot"]["id"] == ids[1], out.stderr

    common = _common(ids)
    out = backout("rollback", "--yes", "--to", "2.3.0", "--snapshot", common, *cfg, env=ENV)
    assert out.returncode == 2 and f"{common!r} is the beginning of 2 snapshot ids" in out.stderr
    assert ids[0] in out.stderr and ids[1] in out.stderr
    out = backout("rollback", "--yes", "--to", "2.3.0", "--snapshot", "19990101", *cfg, env=ENV)
    assert out.returncode == 2 and "no snapshot 19990101…" in out.stderr and "backout snapshot list" in out.stderr
    status = backout_json("status", *cfg, env=ENV)
    assert status["running"]["version"] == "2.3.1" and status["health"]["ok"]  # refused before anything stopped
