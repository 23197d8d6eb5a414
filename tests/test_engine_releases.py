"""Releases across processes: upgrade paths, refusals, and each broken build's failure."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import time

import httpx
import pytest

ENGINE = [sys.executable, "-m", "engine.cli"]


def _turn(eng, task: str, message: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{eng.url}/execute", headers=eng.headers, json={"task_id": task, "message": message},
                      timeout=20)


def _facts(eng, query: str) -> list[str]:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{eng.url}/memory/knowledge/search", headers=eng.headers, json={"query": query})
    return [f["content"] for f in r.json()["results"]]


def test_upgrade_231_240_241_keeps_earlier_rows(start_engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    brain = tmp_path / "brain.sqlite"
    for n, release in enumerate(["2.3.1", "2.4.0", "2.4.1"]):
        eng = start_engine(release, brain=brain)
        assert httpx.get(f"{eng.url}/health").json()["schema"] == {"2.3.1": 2, "2.4.0": 4, "2.4.1": 5}[release]
        assert _turn(eng, f"up-{n}", f"The step {n} marker is Kestrel{n}.").status_code == 200
        for earlier in range(n + 1):
            assert _facts(eng, f"Kestrel{earlier}") == [f"The step {earlier} marker is Kestrel{earlier}"]
        assert eng.stop() == 0
    # 2.4.0 on the 2.4.1 brain serves.
    eng = start_engine("2.4.0", brain=brain)
    assert _turn(eng, "down-1", "Back on 2.4.0 with Kai.").status_code == 200
    assert eng.stop() == 0


def test_old_release_on_a_newer_brain_refuses_with_migration_required(start_engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    brain = tmp_path / "brain.sqlite"
    eng = start_engine("2.4.0", brain=brain)
    _turn(eng, "t", "The plan is ready.")
    assert eng.stop() == 0
    eng = start_engine("2.3.1", brain=brain, wait=False)
    body = eng.wait_health(lambda r: r.json().get("status") == "error")
    assert body["subsystems"]["database"] == "error"
    r = httpx.get(f"{eng.url}/health")
    assert r.status_code == 503
    for method, path in [("POST", "/execute"), ("GET", "/memory/export"), ("POST", "/feedback")]:
        r = httpx.request(method, f"{eng.url}{path}", headers=eng.headers, json={"task_id": "t", "message": "x"})
        assert (r.status_code, r.json()["error"]["code"]) == (503, "MIGRATION_REQUIRED"), path
    assert eng.popen.poll() is None  # the process stays up
    conn = sqlite3.connect(brain)
    assert conn.execute("SELECT max(id) FROM schema_migrations").fetchone()[0] == 4  # brain untouched


def test_changed_migration_checksum_refuses(start_engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    brain = tmp_path / "brain.sqlite"
    eng = start_engine("2.3.1", brain=brain)
    assert eng.stop() == 0
    conn = sqlite3.connect(brain)
    conn.execute("UPDATE schema_migrations SET sha256 = 'edited' WHERE id = 1")
    conn.commit()
    conn.close()
    eng = start_engine("2.3.1", brain=brain, wait=False)
    eng.wait_health(lambda r: r.json().get("status") == "error")
    r = httpx.post(f"{eng.url}/execute", headers=eng.headers, json={"task_id": "t", "message": "x"})
    assert r.json()["error"]["code"] == "MIGRATION_CHECKSUM_MISMATCH"


def test_errors_build_fails_a_share_of_turns(start_engine) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine("2.4.0-errors", env={"ENGINE_TURN_MS": "20"})
    codes = [_turn(eng, f"e{i}", f"message {i}").status_code for i in range(30)]
    assert 0 < codes.count(500) < 30 and codes.count(200) > 0


def test_latency_build_is_several_times_slower(start_engine) -> None:  # type: ignore[no-untyped-def]
    def median_ms(release: str) -> float:
        eng = start_engine(release, env={"ENGINE_TURN_MS": "100"})
        times = []
        for i in range(5):
            t = time.perf_counter()
            assert _turn(eng, f"l{i}", "hello").status_code == 200
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    assert median_ms("2.4.0-latency") > 3 * median_ms("2.3.1")


def test_health_build_reports_a_subsystem_in_error(start_engine) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine("2.4.0-health", wait=False)
    body = eng.wait_health(lambda r: r.json().get("status") not in ("starting",))
    assert body["status"] != "ok" and body["subsystems"]["asset_directory"] == "error"
    assert httpx.get(f"{eng.url}/health").status_code == 503


def test_crash_build_dies_at_boot_after_migrating(start_engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    brain = tmp_path / "brain.sqlite"
    eng = start_engine("2.4.0-crash", brain=brain, wait=False)
    assert eng.popen.wait(20) != 0
    assert "BOOT_CRASH" in eng.log_text()
    conn = sqlite3.connect(brain)
    assert conn.execute("SELECT max(id) FROM schema_migrations").fetchone()[0] == 4


def test_releases_catalogue_and_changelog() -> None:
    out = subprocess.run([*ENGINE, "releases", "--json"], capture_output=True, text=True, check=True)
    rows = {r["version"]: r for r in json.loads(out.stdout)}
    assert {v: r["migration_head"] for v, r in rows.items() if r["bug"] == "none"} == {
        "2.3.0": 2, "2.3.1": 2, "2.4.0": 4, "2.4.1": 5}
    broken = {r["bug"]: (v, r["migration_head"]) for v, r in rows.items() if r["bug"] != "none"}
    assert set(broken) == {"errors", "latency", "health", "eval", "crash", "drain"}
    assert all(head == 4 and v.startswith("2.4.0-") for v, head in broken.values())
    out = subprocess.run([*ENGINE, "releases", "--changelog", "2.4.0", "--json"], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout)["expected_changes"]["metrics"] == ["latency"]


@pytest.mark.parametrize("argv, message", [
    (["serve", "--release", "9.9.9", "--port", "1"], "unknown release '9.9.9'"),
    (["serve", "--release", "2.3.1", "--brain", "/proc/nope/brain.sqlite"], "does not exist"),
    (["releases", "--changelog", "0.0.1"], "unknown release"),
])
def test_bad_input_gives_one_line_and_exit_2(argv, message) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([*ENGINE, *argv], capture_output=True, text=True, env={"ENGINE_API_KEY": "k", "PATH": ""},
                         timeout=30)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_unwritable_brain_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A read-only mount is unwritable even for root; it lives in a private mount namespace.
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    folder = tmp_path / "ro"
    folder.mkdir()
    script = ('mount -t tmpfs -o ro tmpfs "$1" || exit 99; shift; exec "$@"')
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(folder),
            *ENGINE, "serve", "--release", "2.3.1", "--brain", str(folder / "b.sqlite"), "--port", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, env={"ENGINE_API_KEY": "k", "PATH": "/usr/bin:/bin"})
    if out.returncode == 99 or "unshare failed" in out.stderr:
        pytest.skip(f"no mount rights here: {out.stderr.strip()}")
    assert out.returncode == 2, out.stderr
    assert "not writable" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_port_in_use(start_engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine("2.3.1")
    argv = [*ENGINE, "serve", "--release", "2.3.1", "--brain", str(tmp_path / "b.sqlite"), "--port", str(eng.port)]
    out = subprocess.run(argv, capture_output=True, text=True, env={"ENGINE_API_KEY": "k"}, timeout=30)
    assert out.returncode == 2 and "already in use" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_missing_key_refuses_to_serve(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([*ENGINE, "serve", "--release", "2.3.1", "--brain", str(tmp_path / "b.sqlite")],
                         capture_output=True, text=True, env={}, timeout=30)
    assert out.returncode == 2 and "ENGINE_API_KEY" in out.stderr
