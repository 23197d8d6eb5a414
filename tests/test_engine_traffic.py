"""`engine traffic` against the real Engine: clean runs, the errors build, poisoned tasks, no key."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterator

import pytest

from engine.releases import POISONED_TASK_ID
from engine.traffic import TrafficPlan, TrafficSummary, plan_turns
from engine.turn import PEOPLE, understand
from engine_proc import EngineProcess, engine_cli, free_port


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EngineProcess]]:
    """One running Engine per release used here, started once for the module."""
    started: dict[str, EngineProcess] = {}
    try:
        for release in ("2.3.1", "2.4.0-errors"):
            eng = EngineProcess(release, brain=tmp_path_factory.mktemp(release) / "brain.sqlite")
            eng.start()
            started[release] = eng
        for eng in started.values():
            eng.wait_healthy()
        yield started
    finally:
        for eng in started.values():
            eng.stop()


def traffic_json(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `engine traffic --json`; (exit code, parsed summary)."""
    proc = engine_cli("traffic", "--url", url, "--json", *args, timeout=60)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_traffic_clean_release(engines: dict[str, EngineProcess]) -> None:
    code, summary = traffic_json(engines["2.3.1"].url, "--rate", "10", "--duration", "2")
    assert code == 0
    assert summary["sent"] >= 15 and summary["failed"] == 0
    assert summary["completed"] == summary["sent"] == summary["attempted"]
    assert summary["by_status"] == {"200": summary["sent"]} and summary["by_code"] == {}
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p95_ms"] <= summary["latency_max_ms"]
    assert summary["feedback_failed"] == 0
    assert 1.5 <= summary["elapsed_s"] < 10


def test_traffic_errors_release(engines: dict[str, EngineProcess]) -> None:
    code, summary = traffic_json(engines["2.4.0-errors"].url, "--rate", "20", "--duration", "1.5")
    assert code == 0
    assert summary["failed"] > 0 and summary["completed"] > 0
    assert set(summary["by_code"]) == {"INTERNAL_ERROR"}
    assert summary["by_status"]["500"] == summary["failed"]


def test_traffic_poisoned_task_failures_only(engines: dict[str, EngineProcess]) -> None:
    code, summary = traffic_json(engines["2.3.1"].url, "--rate", "10", "--duration", "2",
                                 "--poison-every", "3")
    assert code == 0
    poisoned = summary["attempted"] // 3
    assert summary["failed"] == poisoned > 0
    assert summary["failed_by_task"] == {POISONED_TASK_ID: poisoned}
    assert summary["by_code"] == {"INTERNAL_ERROR": poisoned}


def test_traffic_human_table(engines: dict[str, EngineProcess]) -> None:
    proc = engine_cli("traffic", "--url", engines["2.3.1"].url, "--rate", "10", "--duration", "0.3",
                      timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "completed 3" in proc.stdout and "latency" in proc.stdout


def test_traffic_missing_key_exits_2() -> None:
    proc = engine_cli("traffic", "--url", "http://127.0.0.1:1", "--duration", "0.2", key=None, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engine: error:") and "ENGINE_API_KEY" in lines[0]


def test_traffic_unreachable_counts_connection_errors() -> None:
    proc = engine_cli("traffic", "--url", f"http://127.0.0.1:{free_port()}", "--json", "--rate", "10",
                      "--duration", "0.3", timeout=30)
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert summary["sent"] == 0 and summary["failed"] == summary["attempted"] == 3
    assert summary["by_status"] == {"0": 3} and summary["by_code"] == {"CONNECTION_ERROR": 3}
    assert "no turn could be sent" in proc.stderr


def test_plan_is_deterministic_and_realistic() -> None:
    plan = TrafficPlan(url="http://x", key="k", rate=100, duration=10, seed=7, poison_every=4)
    turns = plan_turns(plan)
    assert turns == plan_turns(plan) and len(turns) == 1000
    other = plan_turns(TrafficPlan("http://x", "k", rate=100, duration=10, seed=8))
    assert [t.message for t in turns] != [t.message for t in other]
    assert all((t.task_id == POISONED_TASK_ID) == (t.index % 4 == 0) for t in turns)
    assert len({t.task_id for t in turns} - {POISONED_TASK_ID}) <= 20
    assert [t.at for t in turns[:3]] == [0.0, 0.01, 0.02]
    kinds = Counter(t.kind for t in turns)
    assert set(kinds) == {"fact", "people", "question", "chat", "mcp"}
    assert 20 <= kinds["mcp"] <= 90  # about 1 in 20
    assert 120 <= sum(t.rating is not None for t in turns) <= 280  # about 1 in 5
    seen = [understand(t.message) for t in turns]
    assert all(s.mcp for s, t in zip(seen, turns) if t.kind == "mcp")
    assert not any(s.mcp for s, t in zip(seen, turns) if t.kind != "mcp")
    assert all(s.facts for s, t in zip(seen, turns) if t.kind == "fact")
    assert not any(s.facts for s, t in zip(seen, turns) if t.kind == "question")
    assert all(s.people and set(s.people) <= set(PEOPLE)
               for s, t in zip(seen, turns) if t.kind == "people")


def test_summary_render_and_dict() -> None:
    summary = TrafficSummary(url="http://x", attempted=3, sent=2, completed=1, failed=2,
                             by_status={200: 1, 0: 1, 500: 1},
                             by_code={"CONNECTION_ERROR": 1, "INTERNAL_ERROR": 1},
                             latency_p50_ms=50.0, latency_p95_ms=60.0, latency_max_ms=61.0,
                             rate=1, duration=3)
    data = summary.as_dict()
    assert json.loads(json.dumps(data))["by_status"] == {"0": 1, "200": 1, "500": 1}
    text = summary.render()
    assert "completed 1" in text and "CONNECTION_ERROR: 1" in text and "p95 60.0 ms" in text


# -- what a person sees while it runs --------------------------------------------------------------


def test_traffic_progress_lines_without_a_terminal(engines: dict[str, EngineProcess]) -> None:
    proc = engine_cli("traffic", "--url", engines["2.3.1"].url, "--rate", "10", "--duration", "2.2",
                      "--progress-every", "0.5", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("engine traffic: ")]
    assert len(lines) >= 3, proc.stderr
    assert all("/22 turns done after" in line and "completed" in line for line in lines), lines
    assert json.loads(proc.stdout)["completed"] == 22  # stdout stays the summary alone


def test_traffic_progress_bar_on_a_terminal(engines: dict[str, EngineProcess]) -> None:
    import os
    import pty
    import select
    import subprocess
    import sys

    from engine_proc import DEFAULT_KEY

    master, slave = pty.openpty()
    env = {**os.environ, "ENGINE_API_KEY": DEFAULT_KEY, "TERM": "xterm", "COLUMNS": "100"}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "traffic", "--url", engines["2.3.1"].url,
                             "--rate", "10", "--duration", "2"], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        out = proc.communicate(timeout=30)[0].decode()
    finally:
        os.close(master)
    screen = seen.decode(errors="replace")
    assert proc.returncode == 0 and "completed 20" in out
    assert "traffic" in screen and "━" in screen and "/20" in screen and "failed" in screen, screen[-400:]
    assert "engine traffic: " not in screen  # the bar, not the lines for logs


def test_traffic_ctrl_c_prints_the_summary_so_far_and_exits_130(engines: dict[str, EngineProcess]) -> None:
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    from engine_proc import DEFAULT_KEY

    env = {**os.environ, "ENGINE_API_KEY": DEFAULT_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "traffic", "--url", engines["2.3.1"].url, "--rate",
                             "10", "--duration", "60", "--progress-every", "0.3", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        first = ""
        while not first.startswith("engine traffic: ") and time.monotonic() < deadline:  # it runs: Ctrl-C now
            if select.select([proc.stderr], [], [], 0.5)[0]:
                first = proc.stderr.readline()
        assert first.startswith("engine traffic: "), first
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 10
    summary = json.loads(out)
    assert summary["interrupted"] is True and 0 < summary["attempted"] < 600
    assert summary["completed"] == summary["attempted"] and summary["elapsed_s"] < 30
    assert f"the summary covers the {summary['attempted']} turns sent before Ctrl-C" in err


def test_traffic_with_a_key_the_engine_refuses_exits_1_naming_the_variable(
        engines: dict[str, EngineProcess]) -> None:
    proc = engine_cli("traffic", "--url", engines["2.3.1"].url, "--json", "--rate", "10", "--duration", "0.5",
                      key="not-the-engine-key", timeout=60)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["by_status"] == {"401": 5} and summary["completed"] == 0
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("engine: error: ") and "refused every turn (401)" in error
    assert "set ENGINE_API_KEY" in error
