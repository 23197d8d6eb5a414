"""`engine eval` against the real Engine: passes on good releases, fails on the eval-broken build."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import pytest

from engine.evals import CASES, CaseResult, SuiteResult, run_suite, write_json, write_junit
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
