"""Soak: the random operator scenarios (tests/test_scenarios.py, profile `soak`, >= 300 scenarios) and
a long fault-injection sweep (tests/test_fault_sweep.py), side by side on the two cores; the counts
go to bench/RESULTS.md: scenarios, steps, crashes injected and resumed, faults injected, invariant
violations (must be 0) and distinct paths covered ((command, exit code) pairs, fault kinds).

Usage: python bench/soak.py [--scenarios 300] [--steps 10] [--trials 120] [--seed N] [--results bench/RESULTS.md]
Run by `make soak` (hours: each scenario step runs real commands against the real Engine). Not part
of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(test: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start one pytest process for `test` with `env` added, output to `log`."""
    child_env = {**os.environ, **env}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pytest", test, "-p", "no:cacheprovider", "-q",
                                 "-o", "timeout=0"], cwd=ROOT, env=child_env, stdout=out,
                                stderr=subprocess.STDOUT)


def load(path: Path) -> dict[str, Any]:
    """The counts a test saved (empty when it saved none)."""
    return json.loads(path.read_text()) if path.exists() else {}


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() + (" + uncommitted src/ changes" if dirty.stdout.strip() else "")


def render(scen: dict[str, Any], sweep: dict[str, Any], args: argparse.Namespace, codes: tuple[int, int],
           seconds: float) -> str:
    """The RESULTS.md section."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{os.cpu_count()} cores, {platform.platform()}, Python "
               f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, commit {_commit()}")
    total_violations = int(scen.get("violations", 0)) + int(sweep.get("violations", 0))
    lines = [
        f"## {now} — soak: random operator scenarios and fault-injection sweep (`bench/soak.py`)",
        "",
        f"Machine: {machine}. Wall time {seconds / 60:.1f} min; process runtime, reference Engine; "
        f"scenario seed {args.seed}, sweep seed {args.seed}; pytest exit codes: scenarios {codes[0]}, "
        f"sweep {codes[1]}. Asked for: {args.scenarios} scenarios x up to {args.steps} steps, {args.trials} "
        f"sweep trials" + ("" if args.scenarios >= 300 else " (a short run, not the full `make soak`)") + ".",
        "",
        "| | random operator scenarios | fault-injection sweep |",
        "|---|---:|---:|",
        f"| scenarios / trials | {scen.get('scenarios', 0)} | {sweep.get('scenarios', 0)} |",
        f"| steps (commands and traffic bursts) | {scen.get('steps', 0)} | {sweep.get('steps', 0)} |",
        f"| crashes injected (SIGKILL) | {scen.get('crashes_injected', 0)} | {sweep.get('crashes_injected', 0)} |",
        f"| crashes resumed (`--resume` as `status` prints it, exit 0) | {scen.get('crashes_resumed', 0)} | "
        f"{sweep.get('crashes_resumed', 0)} |",
        f"| crashes abandoned (`--abandon`) | {scen.get('crashes_abandoned', 0)} | — |",
        f"| faults injected (fault points, strace errno/SIGKILL, timed SIGKILL) | {scen.get('faults_injected', 0)} | "
        f"{sweep.get('faults_injected', 0)} |",
        f"| **invariant violations** | **{scen.get('violations', 0)}** | **{sweep.get('violations', 0)}** |",
        f"| distinct paths covered | {scen.get('distinct_paths', 0)} (command, exit code) | "
        f"{sweep.get('distinct_paths', 0)} (command, exit codes of fault run and recovery) |",
        f"| distinct fault points reached | {len(scen.get('fault_points') or {})} | "
        f"{len(sweep.get('fault_points') or {})} |",
        "",
        f"Total invariant violations: **{total_violations}**"
        + ("" if not total_violations else " — " + "; ".join(
            f"{k} ×{v}" for k, v in {**(scen.get('violation_kinds') or {}),
                                      **(sweep.get('violation_kinds') or {})}.items())) + ".",
        "",
        "Paths (scenarios): " + ", ".join(f"`{k}` {v}" for k, v in sorted((scen.get("paths") or {}).items())) + ".",
        "",
        "Paths (sweep): " + ", ".join(f"`{k}` {v}" for k, v in sorted((sweep.get("paths") or {}).items())) + ".",
        "",
    ]
    return "\n".join(lines) + "\n"


def write_results(path: Path, section: str) -> None:
    """Insert the section after the file's introduction (newest first)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    at = text.find("\n## ")
    text = text + "\n" + section if at < 0 else text[:at + 1] + section + "\n" + text[at + 1:]
    path.write_text(text)


def main() -> int:
    """Run both soaks side by side and record their counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10)  # 300 x 10 fits in about 2 h on two idle cores
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**32))
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    scen_stats, sweep_stats = work / "scenarios.json", work / "sweep.json"
    print(f"soak: {args.scenarios} scenarios x up to {args.steps} steps, {args.trials} sweep trials, seed "
          f"{args.seed}; logs in {work}", flush=True)
    started = time.monotonic()
    scen = run_pytest("tests/test_scenarios.py::test_operator_scenarios_keep_the_invariants", {
        "BACKOUT_SCENARIO_PROFILE": "soak", "BACKOUT_SCENARIO_EXAMPLES": str(args.scenarios),
        "BACKOUT_SCENARIO_STEPS": str(args.steps), "BACKOUT_SCENARIO_SEED": str(args.seed),
        "BACKOUT_SCENARIO_STATS": str(scen_stats)}, work / "scenarios.log")
    sweep = run_pytest("tests/test_fault_sweep.py", {
        "BACKOUT_SWEEP_TRIALS": str(args.trials), "BACKOUT_SWEEP_SEED": str(args.seed),
        "BACKOUT_SWEEP_STATS": str(sweep_stats)}, work / "sweep.log")
    codes = (scen.wait(), sweep.wait())
    seconds = time.monotonic() - started
    section = render(load(scen_stats), load(sweep_stats), args, codes, seconds)
    write_results(args.results, section)
    print(section)
    print(f"logs: {work}/scenarios.log, {work}/sweep.log")
    return 0 if codes == (0, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
