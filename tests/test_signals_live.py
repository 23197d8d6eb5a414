"""`backout check` live: the reference Engine under `engine traffic`, switched to each broken build.

Each broken 2.4.x build must give `roll-back` with the right trigger; the poisoned task, a single
latency blip and the changelog-announced latency change must give `hold`."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from engine.traffic import TrafficPlan, run_traffic
from engine_proc import DEFAULT_KEY, free_port

pytestmark = [pytest.mark.slow, pytest.mark.live]
# Turns of 200 ms of simulated model time: latency then reflects the release, not the load the
# rest of the test suite puts on the two cores at the same time.
BIN = Path(sys.executable).parent
ENV = {"ENGINE_API_KEY": DEFAULT_KEY}
WINDOW = 8  # seconds per metric window in these tests


def _deployment(folder: Path) -> tuple[Path, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = backout("init", "--runtime", "process", "--profile", "engine", "--port", str(port), "--brain", "brain.sqlite",
                  "--command", f"{BIN}/engine serve --release {{version}} --brain {{brain}} --port {{port}}",
                  "--check", f"{BIN}/engine releases --changelog {{version}}", "--health-url", f"{url}/health",
                  "--pass-env", "ENGINE_API_KEY", "--env", "ENGINE_TURN_MS=200", cwd=folder)
    assert out.returncode == 0, out.stderr
    config = folder / "backout.toml"
    config.write_text(config.read_text() + f"""
[deployments.engine.verdict]
window = "{WINDOW}s"
min_requests = 25
sustained_windows = 2
health_failures = 2
health_duration = "4s"
baseline_window = "60s"

[deployments.engine.evals]
command = "{sys.executable} -m engine.cli eval --url {{url}} --json {{out}} --quiet"
pass_env = ["ENGINE_API_KEY"]
""")
    text = config.read_text().replace("frozen = []",
                                      f'frozen = []\nchangelog_command = "{BIN}/engine releases --changelog {{version}} --json"')
    config.write_text(text)
    return config, url


def _traffic(url: str, seconds: float, rate: float = 10, poison_every: int = 0) -> threading.Thread:
    plan = TrafficPlan(url=url, key=DEFAULT_KEY, rate=rate, duration=seconds, seed=int(time.time()),
                       poison_every=poison_every)
    thread = threading.Thread(target=run_traffic, args=(plan,))
    thread.start()
    return thread


def _check(config: Path, evals: bool) -> dict:  # type: ignore[type-arg]
    out = backout("check", "--json", *([] if evals else ["--no-evals"]), "--config", str(config), env=ENV,
                  timeout=180)
    assert out.returncode in (0, 5, 6), out.stderr  # hold, roll-back, inconclusive
    return dict(json.loads(out.stdout))


def _run(tmp_path: Path, target: str, poison_every: int = 0, blip: bool = False,
         evals: bool = False) -> dict:  # type: ignore[type-arg]
    """Baseline on 2.3.1 under traffic, switch to `target`, check until roll-back or the end.

    Evals run only where they are the signal under test, so each trigger is exercised on its own
    (the errors build fails eval cases too)."""
    config, url = _deployment(tmp_path)
    cfg = ["--config", str(config)]
    try:
        assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
        _traffic(url, 12, poison_every=poison_every).join()
        backout_json("baseline", "capture", *cfg, env=ENV, timeout=180)
        # --force: a build that is never healthy is refused before the stop; here it must run to be judged.
        switched = json.loads(backout("switch", target, "--force", "--yes", "--json", *cfg, env=ENV).stdout)
        load = _traffic(url, 3 * WINDOW + 2, poison_every=poison_every)
        if blip:  # one stall of a few seconds in the first window, then normal service
            time.sleep(2)
            pid = int(json.loads(next(tmp_path.rglob("service.pid.json")).read_text())["pid"])
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                os.kill(int(child), signal.SIGSTOP)
                time.sleep(2.5)
                os.kill(int(child), signal.SIGCONT)
        verdicts = []
        deadline = time.monotonic() + 3 * WINDOW + 20
        while time.monotonic() < deadline:
            verdicts.append(_check(config, evals))
            if verdicts[-1]["decision"] == "roll-back" or (load.is_alive() is False and len(verdicts) > 1):
                break
            time.sleep(2)
        load.join()
        final = _check(config, evals) if verdicts[-1]["decision"] != "roll-back" else verdicts[-1]
        final["switch_healthy"] = switched["healthy"]
        return final
    finally:
        backout("stop", "--yes", *cfg, env=ENV)


@pytest.mark.parametrize("build, trigger", [
    ("2.4.0-errors", "errors"), ("2.4.0-latency", "latency"), ("2.4.0-health", "health"),
    ("2.4.0-eval", "evals"), ("2.4.0-crash", "health"),
])
def test_broken_builds_get_roll_back_with_the_right_trigger(tmp_path: Path, build: str, trigger: str) -> None:
    verdict = _run(tmp_path, build, evals=trigger == "evals")
    assert verdict["decision"] == "roll-back", verdict
    assert trigger in verdict["triggers"], verdict
    assert verdict["reason"]


@pytest.mark.parametrize("case", ["poisoned-task", "latency-blip", "announced-latency"])
def test_things_that_are_not_a_broken_release_hold(tmp_path: Path, case: str) -> None:
    if case == "poisoned-task":
        verdict = _run(tmp_path, "2.3.0", poison_every=4)
    elif case == "latency-blip":
        verdict = _run(tmp_path, "2.3.0", blip=True)
    else:
        verdict = _run(tmp_path, "2.4.0", evals=True)  # its changelog announces ~40% slower turns
    assert verdict["decision"] == "hold", verdict
    assert not verdict["triggers"]


def test_customer_report_counts_and_exit_codes(tmp_path: Path) -> None:
    config, url = _deployment(tmp_path)
    cfg = ["--config", str(config)]
    try:
        out = backout("check", *cfg, env=ENV)
        assert out.returncode == 2 and "no baseline" in out.stderr
        assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
        _traffic(url, 6).join()
        backout_json("baseline", "capture", "--no-evals", *cfg, env=ENV)
        out = backout("check", "--no-evals", "--customer-report", "replies are empty since the upgrade", *cfg, env=ENV)
        assert out.returncode == 5 and "reports" in out.stdout
    finally:
        backout("stop", "--yes", *cfg, env=ENV)
