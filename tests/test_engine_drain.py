"""Drain on SIGTERM: in-flight turns finish and are kept, new ones get 503, exit code 0."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx


def test_sigterm_drains_in_flight_turns_then_exits_zero(start_engine) -> None:  # type: ignore[no-untyped-def]
    # The latency build with 200 ms turns: each turn takes about 1.2 s, long enough to catch.
    eng = start_engine("2.4.0-latency", env={"ENGINE_TURN_MS": "200", "ENGINE_DRAIN_TIMEOUT": "20"})
    started = threading.Event()
    received: list[str] = []

    def stream_turn() -> None:
        with httpx.stream("POST", f"{eng.url}/execute", headers=eng.headers, timeout=20,
                          json={"task_id": "drain-1", "message": "The drain test is running. Met Zoe."}) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    received.append(line)
                    started.set()

    client = threading.Thread(target=stream_turn)
    client.start()
    assert started.wait(10)
    eng.popen.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + 5
    while (health := httpx.get(f"{eng.url}/health")).json()["status"] != "draining":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert health.status_code == 503 and health.json()["in_flight"] == 1
    late = httpx.post(f"{eng.url}/execute", headers=eng.headers, json={"task_id": "drain-2", "message": "hi"})
    assert late.status_code == 503 and late.headers["retry-after"]
    assert late.json()["error"]["code"] == "DRAINING"

    client.join(20)
    assert '"phase": "completed"' in received[-1]
    assert eng.popen.wait(20) == 0
    conn = sqlite3.connect(eng.brain)
    assert conn.execute("SELECT count(*) FROM conversations WHERE task_id = 'drain-1'").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM conversations WHERE task_id = 'drain-2'").fetchone()[0] == 0
    # Working memory of the drained turn was flushed before exit.
    assert conn.execute("SELECT count(*) FROM working_memory_log WHERE task_id = 'drain-1'").fetchone()[0] > 0
    assert '"drain complete"' in eng.log_text()


def test_idle_engine_exits_zero_on_sigterm(start_engine) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine("2.3.1")
    assert eng.stop() == 0


def test_drain_ignoring_build_is_still_running_at_the_deadline(start_engine) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine("2.4.0-drain", env={"ENGINE_DRAIN_TIMEOUT": "1"})
    eng.popen.send_signal(signal.SIGTERM)
    time.sleep(2.0)
    assert eng.popen.poll() is None
    assert httpx.get(f"{eng.url}/health").status_code == 200
    assert "SIGTERM ignored" in eng.log_text()
    eng.popen.kill()
    assert eng.popen.wait(5) == -signal.SIGKILL
