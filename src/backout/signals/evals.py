"""Regression evals: run the configured command, read its JUnit XML or JSON, case by case."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from backout.config import EvalSettings
from backout.errors import EXIT_USAGE, BackoutError
from backout.signals.model import EvalRun

__all__ = ["EvalError", "parse_results", "run_evals"]

_BASICS = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")


class EvalError(BackoutError):
    """The eval command could not run or its results could not be read."""


def _junit(text: str) -> dict[str, bool]:
    root = ET.fromstring(text)
    cases: dict[str, bool] = {}
    for case in root.iter("testcase"):
        name = case.get("name") or "?"
        cls = case.get("classname")
        key = f"{cls}.{name}" if cls and not name.startswith(cls) else name
        failed = any(child.tag in ("failure", "error") for child in case)
        skipped = any(child.tag == "skipped" for child in case)
        if not skipped:
            cases[key] = not failed
    return cases


def _json(data: Any) -> dict[str, bool]:
    """{"cases": [{"name", "passed"}]} (engine eval), {"name": bool}, or [{"name", "status"}]."""
    rows = data.get("cases", data) if isinstance(data, dict) else data
    if isinstance(rows, dict):
        return {str(k): bool(v) for k, v in rows.items()}
    cases = {}
    for row in rows:
        passed = row.get("passed")
        if passed is None:
            passed = str(row.get("status", row.get("outcome", ""))).lower() in ("pass", "passed", "ok", "success")
        cases[str(row.get("name") or row.get("id"))] = bool(passed)
    return cases


def parse_results(path: Path, fmt: str = "auto") -> dict[str, bool]:
    """Case name -> passed, from a JUnit XML or JSON results file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvalError(f"cannot read eval results {path}: {exc.strerror}") from None
    kind = fmt if fmt != "auto" else ("junit" if text.lstrip().startswith("<") else "json")
    try:
        cases = _junit(text) if kind == "junit" else _json(json.loads(text))
    except (ET.ParseError, ValueError, AttributeError, TypeError) as exc:
        raise EvalError(f"eval results {path} are not valid {kind}: {exc}") from None
    if not cases:
        raise EvalError(f"eval results {path} contain no cases")
    return cases


def run_evals(settings: EvalSettings, url: str, version: str | None) -> EvalRun:
    """Run the eval command against `url` and read its results (a failing case is data, not an error)."""
    with tempfile.TemporaryDirectory(prefix="backout-eval-") as tmp:
        out = Path(tmp) / ("results.xml" if settings.format == "junit" else "results.json")
        values = {"url": url, "out": str(out), "version": version or ""}
        try:
            argv = [token.format(**values) for token in shlex.split(settings.command)]
        except (KeyError, ValueError) as exc:
            raise EvalError(f"eval command {settings.command!r} is malformed ({exc}); placeholders are "
                            "{url}, {out}, {version}", EXIT_USAGE) from None
        missing = [n for n in settings.pass_env if n not in os.environ]
        if missing:
            raise EvalError(f"{', '.join(missing)} not set in backout's environment (evals pass_env)", EXIT_USAGE)
        # Only what the command needs: the basics plus the secrets it names, not all of ours.
        env = {k: v for k, v in os.environ.items() if k in _BASICS or k.startswith("LC_") or k in settings.pass_env}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                                  timeout=settings.timeout.total_seconds())
        except FileNotFoundError:
            raise EvalError(f"eval command {argv[0]!r} not found; fix [deployments.NAME.evals] command") from None
        except subprocess.TimeoutExpired:
            raise EvalError(f"evals did not finish in {settings.timeout}") from None
        if not out.exists():
            said = (proc.stderr or proc.stdout).strip().splitlines()
            raise EvalError(f"eval command exited {proc.returncode} without writing {{out}}: "
                            f"{said[-1] if said else 'no output'}")
        return EvalRun(parse_results(out, settings.format), time.time(), version, shlex.join(argv))
