"""`backout incidents` lists the incidents real rollbacks recorded, newest first (text and --json, --limit), says
so when there are none, and the commands that take an incident id accept a unique beginning of one and `latest`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from rollback_setup import ENV, init_process

ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_no_incidents_is_said_in_a_sentence(tmp_path: Path) -> None:
    out = backout("incidents", cwd=tmp_path)
    root = tmp_path / ".backout" / "incidents"
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout == (f"no incidents in {root} yet: each rollback (`backout rollback`, or the one an upgrade "
                          "or its watch window runs) records one there\n")
    listed = backout_json("incidents", cwd=tmp_path)
    assert listed == {"folder": str(root), "incidents": [], "more": 0, "unreadable": []}
    for command in (("salvage", "show", "latest"), ("salvage", "replay", "latest", "--yes")):
        out = backout(*command, cwd=tmp_path)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr == f"backout: error: no incidents in {root} yet, so `latest` names none: a rollback " \
                             "records one\n"


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = init_process(tmp_path)
    yield config
    backout("stop", "--yes", "--config", str(config), env=ENV)


def _rollback_to(config: Path, version: str) -> dict:
    out = backout("rollback", "--to", version, "--reason", f"back to {version}", "--yes", "--json",
                  "--config", str(config), env=ENV, timeout=240)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["result"]


def test_incidents_of_real_rollbacks_newest_first_with_prefixes_and_latest(config: Path) -> None:
    cfg = ["--config", str(config)]
    for version in ("2.3.0", "2.3.1"):
        assert backout_json("switch", version, "--yes", *cfg, env=ENV)["healthy"]
    first = _rollback_to(config, "2.3.0")  # same schema: the image only
    for version in ("2.4.0", "2.4.1"):
        assert backout_json("switch", version, "--yes", *cfg, env=ENV)["healthy"]
    second = _rollback_to(config, "2.4.0")  # 2.4.1's migration is additive: the image only
    older, newer = first["incident_id"], second["incident_id"]
    assert older != newer and first["layer"] == second["layer"] == "image"

    # The table: one line per incident, newest first, then where each one's folder is.
    out = backout("incidents", *cfg)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "TIME", "(UTC)", "VERSIONS", "LAYER", "OUTCOME"]
    rows = [line.split() for line in lines[1:3]]
    assert [row[0] for row in rows] == [newer, older]
    assert rows[0][2:] == ["2.4.1", "->", "2.4.0", "image", "rolled-back"]
    assert rows[1][2:] == ["2.3.1", "->", "2.3.0", "image", "rolled-back"]
    assert all(re.fullmatch(ISO_UTC, row[1]) for row in rows), rows
    assert rows[0][1] >= rows[1][1]
    incidents_dir = config.parent / ".backout" / "incidents"
    assert lines[3].startswith(f"each incident's folder is {incidents_dir}/ID (") and len(lines) == 4

    listed = backout_json("incidents", *cfg)
    assert [i["id"] for i in listed["incidents"]] == [newer, older] and listed["more"] == 0
    top = listed["incidents"][0]
    assert (top["deployment"], top["from_version"], top["to_version"], top["layer"], top["outcome"]) == \
        ("engine", "2.4.1", "2.4.0", "image", "rolled-back")
    assert top["reason"] == "back to 2.4.0" and top["folder"] == second["incident_folder"]
    assert re.fullmatch(ISO_UTC, top["time"])

    out = backout("incidents", "--limit", "1", *cfg)
    lines = out.stdout.splitlines()
    assert lines[1].split()[0] == newer and lines[2] == "… and 1 older (`--limit N` shows more)"
    limited = backout_json("incidents", "-n", "1", *cfg)
    assert [i["id"] for i in limited["incidents"]] == [newer] and limited["more"] == 1
    assert backout_json("incidents", "--deployment", "elsewhere", *cfg)["incidents"] == []

    # `latest` and a unique beginning name one incident; the commands say its whole id.
    shown = backout_json("salvage", "show", "latest", *cfg)
    assert shown["incident"] == newer and shown["bundle"] is None  # an image rollback salvages nothing
    unique = older[:16]  # its time, to the second: the two rollbacks were seconds apart
    assert not newer.startswith(unique)
    assert backout_json("salvage", "show", unique, *cfg)["incident"] == older
    out = backout("salvage", "replay", "latest", "--yes", *cfg, env=ENV)
    assert out.returncode == 2 and f"incident {newer} has no salvage" in out.stderr

    # An ambiguous beginning lists the candidates; an unknown one says where to look.
    common = os.path.commonprefix([older, newer])
    out = backout("salvage", "show", common, *cfg)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"backout: error: {common!r} is the beginning of 2 incident ids ({newer}, {older}); "
                          "give more of the id, or `latest` for the newest\n")
    out = backout("salvage", "replay", "19990101", "--yes", *cfg, env=ENV)
    assert out.returncode == 2
    assert out.stderr == (f"backout: error: no incident '19990101' in {incidents_dir}; known incidents, newest "
                          f"first: {newer}, {older} (`backout incidents` lists them)\n")
