"""Regression evals through the configured command, read as JSON or JUnit XML."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backout.config import EvalSettings
from backout.signals.evals import EvalError, parse_results, run_evals

ENGINE_EVAL = f"{sys.executable} -m engine.cli eval --url {{url}} --quiet"


@pytest.fixture(autouse=True)
def _key(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from engine_proc import DEFAULT_KEY

    monkeypatch.setenv("ENGINE_API_KEY", DEFAULT_KEY)


@pytest.mark.parametrize("fmt, flag", [("json", "--json"), ("junit", "--junit")])
def test_eval_runs_are_read_case_by_case(start_engine, fmt: str, flag: str) -> None:  # type: ignore[no-untyped-def]
    good = start_engine("2.3.1")
    bad = start_engine("2.4.0-eval")
    settings = EvalSettings(command=f"{ENGINE_EVAL} {flag} {{out}}", format=fmt,  # type: ignore[arg-type]
                            pass_env=["ENGINE_API_KEY"])
    before = run_evals(settings, good.url, "2.3.1")
    after = run_evals(settings, bad.url, "2.4.0-eval")
    assert len(before.cases) >= 15 and not before.failed
    assert set(before.cases) == set(after.cases)  # stable names: comparable run to run
    assert after.failed and all("fact" in name for name in after.failed)


def test_bad_eval_command_and_bad_results(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="not found"):
        run_evals(EvalSettings(command="/nonexistent/eval --out {out}"), "http://127.0.0.1:1", None)
    with pytest.raises(EvalError, match="without writing"):
        run_evals(EvalSettings(command="true {out}"), "http://127.0.0.1:1", None)
    broken = tmp_path / "r.json"
    broken.write_text("{not json")
    with pytest.raises(EvalError, match="not valid json"):
        parse_results(broken)
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuite><testcase classname="s" name="a"/><testcase classname="s" name="b">'
                   '<failure message="x"/></testcase><testcase classname="s" name="c"><skipped/></testcase></testsuite>')
    assert parse_results(xml) == {"s.a": True, "s.b": False}


def test_eval_command_gets_only_the_secrets_it_names(start_engine, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine("2.3.1")
    monkeypatch.setenv("UNRELATED_SECRET", "bko_canary_must_not_leak")
    with pytest.raises(EvalError, match="ENGINE_API_KEY"):  # not named: the command does not get it
        run_evals(EvalSettings(command=f"{ENGINE_EVAL} --json {{out}}"), eng.url, None)
    script = tmp_path / "env_probe.py"
    script.write_text("import os, sys, json\n"
                      "json.dump({'cases': [{'name': k, 'passed': True} for k in os.environ]}, open(sys.argv[1], 'w'))\n")
    probe = EvalSettings(command=f"{sys.executable} {script} {{out}}")
    seen = run_evals(probe, eng.url, None).cases
    assert "UNRELATED_SECRET" not in seen and "PATH" in seen
