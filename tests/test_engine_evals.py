"""`engine eval` against the real Engine: passes on good releases, fails on the eval-broken build."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.profiles.engine import TURN_PATH
from engine.evals import (CASES, CaseResult, SuiteResult, load_regression_cases, run_suite, write_json,
                          write_junit)
from engine_proc import DEFAULT_KEY, EngineProcess, engine_cli, free_port

FACT_CASES = {"fact_simple_statement", "fact_subject_is_searchable", "fact_two_in_one_message",
              "fact_not_from_question"}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EngineProcess]]:
    """One running Engine per release used here, started once for the module."""
    started: dict[str, EngineProcess] = {}
    try:
        for release in ("2.3.1", "2.4.1", "2.4.0-eval"):
            eng = EngineProcess(release, brain=tmp_path_factory.mktemp(release) / "brain.sqlite")
            eng.start()
            started[release] = eng
        for eng in started.values():
            eng.wait_healthy()
        yield started
    finally:
        for eng in started.values():
            eng.stop()


def run_eval(url: str, tmp_path: Path, tag: str = "run") -> tuple[Any, dict[str, Any], ET.Element]:
    """Run the CLI with --junit and --json; (completed process, JSON result, JUnit root)."""
    junit, out = tmp_path / f"{tag}.xml", tmp_path / f"{tag}.json"
    proc = engine_cli("eval", "--url", url, "--junit", str(junit), "--json", str(out))
    return proc, json.loads(out.read_text()), ET.parse(junit).getroot()


def check_junit(root: ET.Element, result: dict[str, Any]) -> None:
    """The JUnit file agrees with the JSON result."""
    assert root.tag == "testsuite" and root.get("name") == "engine-eval"
    cases = root.findall("testcase")
    assert int(root.get("tests", "-1")) == len(cases) == result["total"]
    assert int(root.get("failures", "-1")) == result["failed"]
    assert {c.get("classname") for c in cases} == {"engine.eval"}
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {c["name"] for c in result["cases"] if not c["passed"]}
    for c in cases:
        failure = c.find("failure")
        if failure is not None:
            assert failure.get("message")


@pytest.mark.parametrize("release", ["2.3.1", "2.4.1"])
def test_eval_passes_on_good_release(engines: dict[str, EngineProcess], release: str,
                                     tmp_path: Path) -> None:
    proc, result, root = run_eval(engines[release].url, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["ok"] is True and result["version"] == release
    assert result["total"] >= 15 and result["passed"] == result["total"]
    check_junit(root, result)
    assert f"{result['total']}/{result['total']} cases passed against {release}" in proc.stdout


def test_eval_fails_on_eval_build(engines: dict[str, EngineProcess], tmp_path: Path) -> None:
    proc, result, root = run_eval(engines["2.4.0-eval"].url, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert result["ok"] is False
    failed = {c["name"] for c in result["cases"] if not c["passed"]}
    assert failed == FACT_CASES
    check_junit(root, result)
    for name in FACT_CASES:
        assert f"FAIL {name}: " in proc.stdout


def test_case_names_stable_between_runs(engines: dict[str, EngineProcess], tmp_path: Path) -> None:
    """Two runs on the same brain: same case names in the same order, and no stale data leaks."""
    url = engines["2.3.1"].url
    _, first, _ = run_eval(url, tmp_path, "first")
    _, second, _ = run_eval(url, tmp_path, "second")
    names = [c["name"] for c in first["cases"]]
    assert names == [c["name"] for c in second["cases"]] == list(CASES)
    assert len(set(names)) == len(names) >= 15
    assert first["run_id"] != second["run_id"]
    assert first["ok"] and second["ok"], (first, second)


def test_case_that_raises_is_a_failure_not_a_crash(engines: dict[str, EngineProcess],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx: Any) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setitem(CASES, "boom", boom)
    result = run_suite(engines["2.3.1"].url, DEFAULT_KEY, only=["boom", "health_ok"])
    by_name = {c.name: c for c in result.cases}
    assert by_name["health_ok"].passed
    assert not by_name["boom"].passed and "RuntimeError: kaboom" in by_name["boom"].detail
    assert not result.ok and result.passed == 1


def test_wrong_key_fails_cases_with_clear_detail(engines: dict[str, EngineProcess]) -> None:
    result = run_suite(engines["2.3.1"].url, "not-the-key", only=["fact_simple_statement", "health_ok"])
    by_name = {c.name: c for c in result.cases}
    assert by_name["health_ok"].passed
    assert "401 INVALID_KEY" in by_name["fact_simple_statement"].detail


def test_eval_unreachable_engine_exits_2() -> None:
    proc = engine_cli("eval", "--url", f"http://127.0.0.1:{free_port()}", timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("engine: error: cannot reach the Engine")


def test_eval_missing_key_exits_2() -> None:
    proc = engine_cli("eval", "--url", "http://127.0.0.1:1", key=None, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "ENGINE_API_KEY" in proc.stderr


def test_report_writers_escape_details(tmp_path: Path) -> None:
    cases = [CaseResult("a", True, "", 1.5), CaseResult("b", False, 'bad <x> & "y"\nz', 2.0)]
    result = SuiteResult(cases=cases, version="9.9.9", url="http://h", run_id="r")
    write_junit(result, tmp_path / "deep" / "j.xml")
    write_json(result, tmp_path / "j.json")
    root = ET.parse(tmp_path / "deep" / "j.xml").getroot()
    failure = root.find("testcase[@name='b']/failure")
    assert failure is not None and failure.text == 'bad <x> & "y"\nz'
    assert root.get("failures") == "1" and root.get("tests") == "2"
    data = json.loads((tmp_path / "j.json").read_text())
    assert data["passed"] == 1 and data["failed"] == 1 and data["ok"] is False


# -- regression cases (--cases-dir) ----------------------------------------------------------


def regression_dir(tmp_path: Path) -> Path:
    """Regression cases as a backout rollback writes them, plus one hand-written case."""
    from backout.evidence import write_regression_case

    errors = {"id": "20261127T011500Z-2.4.0-errors", "from_version": "2.4.0-errors",
              "to_version": "2.3.1", "verdict": {"trigger": "errors"},
              "failed_requests": [{"status": 500, "task_id": "t-17", "path": "/execute"}]}
    crash = {"id": "20261127T020000Z-2.4.0-crash", "from_version": "2.4.0-crash",
             "verdict": {"trigger": "health"}}
    for record in (errors, crash):
        assert write_regression_case(tmp_path, record, turn_path=TURN_PATH) is not None
    folder = tmp_path / "regression"
    (folder / "listed.json").write_text(json.dumps(
        {"name": "regression_listed", "kind": "health", "cases": ["health_ok", "no_such_case"]}))
    return folder


def test_eval_cases_dir_runs_regression_cases(engines: dict[str, EngineProcess],
                                              tmp_path: Path) -> None:
    folder = regression_dir(tmp_path)
    junit, out = tmp_path / "r.xml", tmp_path / "r.json"
    proc = engine_cli("eval", "--url", engines["2.3.1"].url, "--cases-dir", str(folder),
                      "--junit", str(junit), "--json", str(out))
    result = json.loads(out.read_text())
    by_name = {c["name"]: c for c in result["cases"]}
    regressions = {"regression_20261127t011500z_2_4_0_errors",
                   "regression_20261127t020000z_2_4_0_crash", "regression_listed"}
    assert list(by_name)[:len(CASES)] == list(CASES) and result["total"] == len(CASES) + 4
    assert all(by_name[n]["passed"] for n in [*CASES, *regressions]), result
    assert not by_name["no_such_case"]["passed"]
    assert by_name["no_such_case"]["detail"] == \
        "unknown case (listed by regression_listed in listed.json)"
    assert proc.returncode == 1 and "FAIL no_such_case: unknown case" in proc.stdout
    check_junit(ET.parse(junit).getroot(), result)


def test_regression_case_reruns_its_listed_cases(engines: dict[str, EngineProcess],
                                                 tmp_path: Path) -> None:
    from backout.evidence import write_regression_case

    record = {"id": "evals-incident", "from_version": "2.4.0-eval",
              "failed_eval_cases": sorted(FACT_CASES)}
    path = write_regression_case(tmp_path, record, turn_path=TURN_PATH)
    assert path is not None
    extra = load_regression_cases([path.parent])
    bad = run_suite(engines["2.4.0-eval"].url, DEFAULT_KEY, only=["health_ok"], extra=extra)
    by_name = {c.name: c for c in bad.cases}
    assert [c.name for c in bad.cases] == ["health_ok", "regression_evals_incident"]
    assert by_name["health_ok"].passed and not by_name["regression_evals_incident"].passed
    detail = by_name["regression_evals_incident"].detail
    assert all(f"{name}: " in detail for name in FACT_CASES), detail
    good = run_suite(engines["2.4.1"].url, DEFAULT_KEY, only=[], extra=extra)
    assert good.ok and [c.name for c in good.cases] == ["regression_evals_incident"]


def test_regression_turn_case_reports_failing_turns(engines: dict[str, EngineProcess],
                                                    tmp_path: Path) -> None:
    extra = load_regression_cases([regression_dir(tmp_path)])
    name = "regression_20261127t011500z_2_4_0_errors"
    result = run_suite(engines["2.3.1"].url, "not-the-key", only=[], extra={name: extra[name]})
    [case] = result.cases
    assert not case.passed
    assert case.detail.startswith("10/10 turn(s) did not answer 200 completed, "
                                  "first: turn 1 (task t-17): HTTP 401 INVALID_KEY"), case.detail


def test_broken_regression_files_are_failed_cases(engines: dict[str, EngineProcess],
                                                  tmp_path: Path) -> None:
    (tmp_path / "garbled.json").write_text("{not json")
    (tmp_path / "empty_turn.json").write_text(json.dumps({"name": "r_turn", "kind": "turn"}))
    (tmp_path / "taken.json").write_text(json.dumps({"name": "health_ok", "kind": "health"}))
    (tmp_path / "weird.json").write_text(json.dumps({"name": "r_weird", "kind": "sql"}))
    (tmp_path / "notes.txt").write_text("not a case")
    extra = load_regression_cases([tmp_path])
    assert sorted(extra) == ["empty_turn", "garbled", "health_ok#2", "weird"]
    result = run_suite(engines["2.3.1"].url, DEFAULT_KEY, only=[], extra=extra)
    details = {c.name: c.detail for c in result.cases if not c.passed}
    assert set(details) == set(extra)
    assert details["garbled"].startswith("invalid regression case file: cannot read garbled.json")
    assert details["empty_turn"] == ("invalid regression case file: empty_turn.json is of kind "
                                     "'turn' but has no `requests`")
    assert "case name 'health_ok' is already taken" in details["health_ok#2"]
    assert "kind 'sql' is not one of" in details["weird"]


def test_eval_cases_dir_missing_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    proc = engine_cli("eval", "--url", "http://127.0.0.1:1", "--cases-dir", str(missing), timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"engine: error: regression cases folder {missing} does not exist"
