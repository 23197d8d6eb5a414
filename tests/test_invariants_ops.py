"""The operator's invariants 2, 3, 5, 6 and 7 (docs/safety.md), each through the real CLI and the
reference Engine on the process runtime: the defects an operator met, kept as regression tests."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from rollback_setup import ENV, init_process, turns

WATCH = """
[deployments.{name}.upgrade]
watch = "1s"
check_every = "1s"
"""


def _cfg(config: Path) -> list[str]:
    return ["--config", str(config)]


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = init_process(tmp_path, WATCH)
    assert backout_json("switch", "2.3.1", "--yes", *_cfg(config), env=ENV)["healthy"]
    yield config
    backout("stop", "--yes", *_cfg(config), env=ENV)


def _without_check(config: Path) -> None:
    """A process deployment with no `check` command: only a trial boot can prove a version starts."""
    config.write_text(re.sub(r"(?m)^check = .*\n", "", config.read_text()))


def _upgrade(config: Path, *args: str) -> tuple[int, list[dict]]:
    out = backout("upgrade", *args, "--yes", "--json", *_cfg(config), env=ENV, timeout=300)
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_a_second_rollback_refuses_instead_of_returning_to_the_broken_build(config: Path) -> None:
    turns(config, "good")
    code, _ = _upgrade(config, "2.4.0-errors", "--watch", "0")  # promoted at once: the verdict never ran
    assert code == 0
    first = backout("rollback", "--yes", "--json", *_cfg(config), env=ENV, timeout=300)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["result"]["to_version"] == "2.3.1"
    again = backout("rollback", "--yes", *_cfg(config), env=ENV, timeout=300)
    assert again.returncode == 3, again.stderr
    assert "2.3.1 is the restore point and is running; nothing to roll back" in again.stderr
    dry = backout("rollback", "--dry-run", *_cfg(config), env=ENV)
    assert dry.returncode == 3 and "nothing to roll back" in dry.stderr
    status = backout_json("status", *_cfg(config), env=ENV)
    assert status["running"]["version"] == "2.3.1" and status["rollback_target"]["version"] is None
    assert "nothing to roll back" in status["rollback_target"]["why_not"]  # status says what rollback says
    bad = {v["version"]: v for v in status["versions"]}["2.4.0-errors"]
    assert bad["standing"] == "bad"
    history = backout_json("history", *_cfg(config))
    upgrade = next(h for h in history if h["kind"] == "upgrade")
    assert upgrade["outcome"] == "rolled-back" and upgrade["recorded_outcome"] == "ok"
    # The bad version is refused by switch and upgrade unless forced, and --force is recorded.
    for argv in (["switch", "2.4.0-errors", "--yes"], ["upgrade", "2.4.0-errors", "--yes"],
                 ["rollback", "--to", "2.4.0-errors", "--yes"]):
        out = backout(*argv, *_cfg(config), env=ENV)
        assert out.returncode == 3 and "judged bad" in out.stderr, (argv, out.stderr)
    assert backout_json("status", *_cfg(config), env=ENV)["running"]["version"] == "2.3.1"


def test_a_typo_in_the_version_stops_nothing(config: Path) -> None:
    _without_check(config)
    turns(config, "before")
    out = backout("switch", "9.9.9", "--yes", *_cfg(config), env=ENV, timeout=120)
    assert out.returncode == 3, out.stderr
    assert "nothing was stopped" in out.stderr and "unknown release" in out.stderr  # the service's own words
    dry = backout("upgrade", "9.9.9", "--dry-run", *_cfg(config), env=ENV, timeout=120)
    assert dry.returncode == 3 and "nothing was stopped" in dry.stderr
    real = backout("upgrade", "9.9.9", "--yes", *_cfg(config), env=ENV, timeout=120)
    assert real.returncode == 3 and "unknown release" in real.stderr
    status = backout_json("status", *_cfg(config), env=ENV)
    assert status["running"]["version"] == "2.3.1" and status["running"]["running"] and status["health"]["ok"]
    assert "9.9.9" not in status["frozen"] and not list((config.parent / ".backout").glob("incidents/*"))
    # A version that does start is proven by the trial boot and switched to.
    good = backout_json("switch", "2.3.0", "--dry-run", *_cfg(config), env=ENV)
    assert good["proof"]["trial"]["healthy"] and not good["proof"]["forced"]
    forced = backout("switch", "9.9.9", "--force", "--yes", "--json", *_cfg(config), env=ENV, timeout=120)
    assert forced.returncode == 1 and json.loads(forced.stdout)["switched_back"]["healthy"]
    forced_switch, back = backout_json("history", *_cfg(config))[-2:]
    assert forced_switch["forced"] is True and forced_switch["outcome"] == "failed"
    assert (back["to_version"], back["outcome"]) == ("2.3.1", "ok") and "switched back" in back["reason"]
    status = backout_json("status", *_cfg(config), env=ENV)  # a failed forced switch leaves 2.3.1 serving
    assert status["running"]["version"] == "2.3.1" and status["running"]["running"]


def test_status_lists_an_interrupted_upgrade_with_a_command_that_finishes_it(config: Path) -> None:
    turns(config, "before")
    out = backout("upgrade", "2.4.0", "--yes", "--watch", "0", *_cfg(config),
                  env={**ENV, "BACKOUT_FAULT_AT": "after:drain"}, timeout=300)
    assert out.returncode == -9
    status = backout_json("status", *_cfg(config), env=ENV)
    pending = [p for p in status["pending"] if p["kind"] == "upgrade"]
    assert len(pending) == 1 and "2.3.1 to 2.4.0" in pending[0]["detail"]
    text = backout("status", *_cfg(config), env=ENV).stdout
    assert pending[0]["finish"] in text
    argv = shlex.split(pending[0]["finish"])
    assert argv[:3] == ["backout", "upgrade", "--resume"]
    done = backout(*argv[1:], "--yes", env=ENV, cwd=Path("/"), timeout=300)  # exactly as printed (plus --yes)
    assert done.returncode == 0, done.stderr
    status = backout_json("status", *_cfg(config), env=ENV)
    assert status["pending"] == [] and status["running"]["version"] == "2.4.0"


def test_a_frozen_restore_point_is_not_ready(config: Path) -> None:
    code, _ = _upgrade(config, "2.4.0", "--watch", "0")
    assert code == 0
    assert backout_json("freeze", "2.3.1", "--reason", "found a bug", "--yes", *_cfg(config))
    status = backout_json("status", *_cfg(config), env=ENV)
    point = status["restore_point"]
    assert point["version"] == "2.3.1" and not point["ready"] and point["standing"]["standing"] == "bad"
    assert status["rollback_target"]["version"] is None
    out = backout("rollback", "--dry-run", *_cfg(config), env=ENV)
    assert out.returncode == 3 and "no version judged good ran before 2.4.0" in out.stderr


def test_baseline_comes_only_from_the_good_version_s_own_traffic(config: Path) -> None:
    assert backout_json("switch", "2.4.0-errors", "--yes", *_cfg(config), env=ENV)["healthy"]
    failed = sum(1 - ok for ok in [turns(config, f"bad-{i}", n=1, strict=False) for i in range(20)])
    assert failed, "the broken build failed no turn"
    assert backout_json("switch", "2.4.0", "--yes", *_cfg(config), env=ENV)["healthy"]
    turns(config, "good", n=10)
    baseline = backout_json("baseline", "capture", "--no-evals", "--yes", *_cfg(config), env=ENV)
    assert baseline["version"] == "2.4.0" and baseline["error_rate"] == 0, baseline
    assert [w["version"] for w in baseline["windows"]] == ["2.4.0"]
    shown = backout("baseline", "show", *_cfg(config), env=ENV).stdout
    assert "served by 2.4.0 from" in shown


def test_check_outcomes_have_their_own_exit_codes(config: Path) -> None:
    backout_json("baseline", "capture", "--no-evals", "--yes", *_cfg(config), env=ENV)
    out = backout("check", "--no-evals", *_cfg(config), env=ENV)
    assert out.returncode == 6 and "INCONCLUSIVE" in out.stdout  # no traffic yet: inconclusive, not "environment"
    out = backout("check", "--no-evals", "--customer-report", "every answer is wrong", *_cfg(config), env=ENV)
    assert out.returncode == 5 and "ROLL-BACK" in out.stdout


def test_the_readme_exit_code_table_matches_the_code() -> None:
    from backout import errors

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1]
    rows = dict(re.findall(r"^\| (\d+) \| ([a-z -]+) \|", table, re.M))
    expected = {errors.EXIT_OK: "success", errors.EXIT_FAILED: "failure", errors.EXIT_USAGE: "usage",
                errors.EXIT_REFUSED: "refused", errors.EXIT_ENVIRONMENT: "environment",
                errors.EXIT_ROLL_BACK: "roll-back advised", errors.EXIT_INCONCLUSIVE: "inconclusive",
                errors.EXIT_INTERRUPTED: "interrupted"}
    assert {int(k): v for k, v in rows.items()} == expected
    assert len(set(expected)) == len(expected)  # one code per outcome


def test_a_dropped_index_is_not_reported_as_lost_data(tmp_path: Path) -> None:
    import sqlite3

    from backout.brain.schema import diff, stamp

    db = tmp_path / "b.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t(a, b); CREATE TABLE gone(x); CREATE INDEX ix ON t(a);")
    conn.close()
    before = stamp(db)
    conn = sqlite3.connect(db)
    conn.executescript("DROP INDEX ix; DROP TABLE gone; ALTER TABLE t DROP COLUMN b;")
    conn.close()
    changes = {c.name: c.loses_data for c in diff(before, stamp(db)).changes}
    assert changes == {"ix": False, "gone": True, "b": True}



def test_status_never_says_nothing_runs_next_to_a_healthy_service(tmp_path: Path) -> None:
    from engine_proc import EngineProcess

    config = init_process(tmp_path)
    port = int(config.read_text().split("127.0.0.1:", 1)[1].split("/", 1)[0])
    outsider = EngineProcess("2.3.1", tmp_path / "other.sqlite", port=port)  # started by hand, not by backout
    outsider.start()
    try:
        outsider.wait_healthy()
        status = backout_json("status", *_cfg(config), env=ENV)
        text = backout("status", *_cfg(config), env=ENV).stdout
    finally:
        outsider.stop()
    assert status["health"]["ok"] and not status["running"]["running"]
    running = next(line for line in text.splitlines() if line.startswith("running"))
    assert "something answers on the health URL" in running and running.split(None, 1)[1] != "nothing"
