"""What an operator sees when something common goes wrong, through the real CLI: an unset placeholder in
`init`, a start that fails (the service's own last words and its log file), a folder that cannot be made,
a port someone else holds, `unfreeze` of a version that is not frozen, and who froze a version."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from backout_cli import backout, backout_json
from engine_proc import free_port
from rollback_setup import BIN, ENV, init_process

README = Path(__file__).resolve().parent.parent / "README.md"
COMMAND = f"{BIN}/engine serve --release {{version}} --brain {{brain}} --port {{port}}"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backout: error: "), stderr
    return lines[0]


@pytest.fixture()
def listener() -> Iterator[int]:
    """A port some other program listens on (this test process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


# -- init: a placeholder nothing sets ------------------------------------------------------------


@pytest.mark.parametrize("extra, command, said", [
    ([], COMMAND, ["--command uses {port}", "add --port 8123 (the port --health-url names)"]),
    (["--port", "8123"], COMMAND.replace("{port}", "{port} --admin {port:admin}"),
     ["--command uses {port:admin}", "--named-port admin=PORT"]),
    (["--port", "8123"], COMMAND.replace("{version}", "{verison}"),
     ["--command uses {verison}, which is not a placeholder", "{version}"]),
    (["--port", "8123", "--check", f"{BIN}/engine releases --changelog {{version}} --port {{port:x}}"], COMMAND,
     ["--check uses {port:x}"]),
])
def test_init_refuses_a_placeholder_nothing_sets(tmp_path: Path, extra: list[str], command: str,
                                                 said: list[str]) -> None:
    out = backout("init", "--runtime", "process", "--command", command, "--brain", "brain.sqlite",
                  "--health-url", "http://127.0.0.1:8123/health", *extra, cwd=tmp_path)
    line = _error_line(out.stderr)
    assert out.returncode == 2 and all(words in line for words in said), line
    assert line.endswith("nothing was written") and _files(tmp_path) == []


def test_a_hand_written_config_without_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = init_process(tmp_path)
    text = config.read_text()
    port = text.split("\nport = ", 1)[1].split("\n", 1)[0]
    config.write_text(text.replace(f"\nport = {port}\n", "\n"))
    out = backout("switch", "2.3.1", "--yes", cwd=tmp_path, env=ENV)
    line = _error_line(out.stderr)
    assert out.returncode == 2 and "uses {port}" in line and f"add `port = {port}`" in line, line
    assert not (tmp_path / ".backout").exists() or not list(tmp_path.rglob("service.pid.json"))


# -- a start that fails --------------------------------------------------------------------------


def test_a_failed_start_quotes_the_service_and_names_its_log(tmp_path: Path) -> None:
    port = free_port()  # no `check` and no brain yet: neither a check nor a trial boot catches a wrong version
    out = backout("init", "--runtime", "process", "--command", COMMAND, "--port", str(port), "--brain", "brain.sqlite",
                  "--health-url", f"http://127.0.0.1:{port}/health", "--pass-env", "ENGINE_API_KEY", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = backout("switch", "9.9.9", "--yes", cwd=tmp_path, env=ENV)
    log = tmp_path / ".backout" / "deployments" / "engine" / "runtime" / "service.log"
    said = "unknown release '9.9.9'"
    assert out.returncode == 1, out.stdout + out.stderr
    assert "9.9.9 is NOT healthy: exited with code 2 before it was healthy" in out.stdout
    assert f"its last log line: engine: error: {said}" in out.stdout and f"the service's log: {log}" in out.stdout
    assert any(line.startswith("  | ") and said in line for line in out.stdout.splitlines()), out.stdout
    assert said in log.read_text()
    entry = backout_json("history", cwd=tmp_path)[-1]
    assert entry["outcome"] == "failed" and str(log) in entry["detail"]
    assert any(said in line for line in entry["health"]["log_tail"]), entry["health"]

    # not frozen, but judged bad by that failed start: unfreeze makes it unknown again (exit 0)
    out = backout("unfreeze", "9.9.9", "--reason", "a typo, not a release", "--yes", cwd=tmp_path, env=ENV)
    assert out.returncode == 0, out.stderr
    assert "9.9.9 was not frozen, but it was judged bad" in out.stdout and "unknown again" in out.stdout
    versions = {v["version"]: v["standing"] for v in backout_json("status", cwd=tmp_path, env=ENV)["versions"]}
    assert versions["9.9.9"] == "unknown"


# -- folders that cannot be made -----------------------------------------------------------------


def _brain(folder: Path) -> Path:
    import sqlite3

    brain = folder / "brain.sqlite"
    conn = sqlite3.connect(brain)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('kept')")
    conn.commit()
    conn.close()
    return brain


def test_a_snapshot_folder_under_proc_is_refused_saying_which_and_why(tmp_path: Path) -> None:
    _brain(tmp_path)
    before = _files(tmp_path)
    out = backout("snapshot", "create", "--brain", "brain.sqlite", "--into", "/proc/snaps", cwd=tmp_path)
    line = _error_line(out.stderr)
    assert out.returncode == 2, line
    assert line.startswith("backout: error: cannot create the folder /proc/snaps: /proc is on a 'proc' file system")
    assert "choose a folder on a disk" in line and "nothing was changed" in line
    assert _files(tmp_path) == before and not Path("/proc/snaps").exists()


def test_a_folder_below_a_file_is_refused(tmp_path: Path) -> None:
    _brain(tmp_path)
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    before = _files(tmp_path)
    out = backout("snapshot", "create", "--brain", "brain.sqlite", "--into", "notes.txt/snaps", cwd=tmp_path)
    line = _error_line(out.stderr)
    assert out.returncode == 2 and f"{tmp_path / 'notes.txt'} is a file, not a folder" in line, line
    assert _files(tmp_path) == before


def test_a_salvage_bundle_folder_under_proc_is_refused(tmp_path: Path) -> None:
    brain = _brain(tmp_path)
    made = backout_json("snapshot", "create", "--brain", "brain.sqlite", "--into", "snaps", cwd=tmp_path)
    before = _files(tmp_path)
    out = backout("salvage", "extract", "--snapshot", made["id"], "--from", str(brain), "--brain", "brain.sqlite",
                  "--snapshot-dir", "snaps", "--bundle-dir", "/proc/bundle", cwd=tmp_path)
    line = _error_line(out.stderr)
    assert out.returncode == 2 and "cannot create the folder /proc/bundle" in line and "'proc' file system" in line
    assert _files(tmp_path) == before


# -- a port someone else holds -------------------------------------------------------------------


def test_a_taken_port_exits_2_as_the_readme_says_and_nothing_starts(tmp_path: Path, listener: int) -> None:
    config = init_process(tmp_path)
    text = config.read_text()
    port = int(text.split("\nport = ", 1)[1].split("\n", 1)[0])
    config.write_text(text.replace(f"port = {port}", f"port = {listener}").replace(f":{port}/", f":{listener}/"))
    out = backout("switch", "2.3.1", "--yes", cwd=tmp_path, env=ENV)
    line = _error_line(out.stderr)
    assert out.returncode == 2, (out.returncode, line)
    assert f"port {listener} (`port` in backout.toml) is already in use by another process" in line
    assert line.endswith("nothing was started")
    assert not list(tmp_path.rglob("service.pid.json")) and backout_json("history", cwd=tmp_path) == []
    row = next(r for r in README.read_text().splitlines() if r.startswith("| 2 | usage |"))
    assert "port in use" in row


def test_a_taken_trial_port_exits_2_and_what_runs_keeps_running(tmp_path: Path, listener: int) -> None:
    config = init_process(tmp_path)
    cfg = ["--config", str(config)]
    try:
        assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
        config.write_text(config.read_text().replace('verify_window = "1s"',
                                                      f'verify_window = "1s"\ntrial_port = {listener}'))
        out = backout("switch", "2.3.0", "--yes", *cfg, env=ENV)
        line = _error_line(out.stderr)
        assert out.returncode == 2 and f"the trial port {listener} (`rollback.trial_port`" in line, line
        assert "nothing was stopped" in line
        status = backout_json("status", *cfg, env=ENV)
        assert status["running"]["version"] == "2.3.1" and status["running"]["running"]
    finally:
        backout("stop", "--yes", *cfg, env=ENV)


# -- freeze and unfreeze -------------------------------------------------------------------------


def test_unfreeze_of_a_version_that_is_not_frozen_is_nothing_to_do(tmp_path: Path) -> None:
    init_process(tmp_path)
    for args in (["--yes"], []):  # no question to ask either: nothing will change
        out = backout("unfreeze", "2.4.0", "--reason", "fixed", *args, cwd=tmp_path)
        assert (out.returncode, out.stdout, out.stderr) == (0, "2.4.0 is not frozen; nothing to do\n", "")
    data = backout_json("unfreeze", "2.4.0", "--reason", "fixed", "--yes", cwd=tmp_path)
    assert data["unfrozen"] is None and data["frozen"] is False
    assert data["detail"] == "2.4.0 is not frozen; nothing to do"
    assert backout_json("history", cwd=tmp_path) == []


def test_a_manual_freeze_is_recorded_and_listed_as_manual(tmp_path: Path) -> None:
    config = init_process(tmp_path)
    name = config.read_text().split("[deployments.", 1)[1].split("]", 1)[0]
    out = backout("freeze", "--list", cwd=tmp_path)
    assert (out.returncode, out.stdout) == (0, f"no version of {name} is frozen\n")
    assert backout_json("freeze", "2.4.0", "--reason", "corrupts threads", "--yes", cwd=tmp_path)["source"] == "manual"
    frozen = tmp_path / ".backout" / "deployments" / name / "frozen.json"
    assert json.loads(frozen.read_text())["2.4.0"]["source"] == "manual"
    listed = backout_json("freeze", "--list", cwd=tmp_path)["frozen"]
    assert [(r["version"], r["source"], r["reason"]) for r in listed] == [("2.4.0", "manual", "corrupts threads")]
    out = backout("freeze", "--list", cwd=tmp_path)
    row = next(line for line in out.stdout.splitlines() if line.startswith("2.4.0"))
    assert out.returncode == 0 and "by hand" in row and "corrupts threads" in row
    assert backout_json("status", cwd=tmp_path, env=ENV)["frozen_by"] == {"2.4.0": "manual"}
    shown = backout("status", cwd=tmp_path, env=ENV).stdout
    assert "frozen       2.4.0 (by hand)" in shown, shown
    again = backout("freeze", "2.4.0", "--reason", "another reason", "--yes", cwd=tmp_path)
    assert again.returncode == 0 and "was frozen already (by hand: corrupts threads)" in again.stdout
    out = backout("unfreeze", "2.4.0", "--reason", "fixed", "--yes", cwd=tmp_path)
    assert out.returncode == 0 and "2.4.0 unfrozen (it was frozen by hand: corrupts threads)" in out.stdout
    assert backout("freeze", "--list", "2.4.0", cwd=tmp_path).returncode == 2
    missing = backout("freeze", "2.4.0", cwd=tmp_path)
    assert missing.returncode == 2 and "freeze needs --reason TEXT" in missing.stderr


def test_a_frozen_version_in_the_config_is_listed_as_such(tmp_path: Path) -> None:
    config = init_process(tmp_path)
    config.write_text(config.read_text().replace("frozen = []", 'frozen = ["2.2.0"]'))
    listed = backout_json("freeze", "--list", cwd=tmp_path)["frozen"]
    assert [(r["version"], r["source"]) for r in listed] == [("2.2.0", "config")]
    assert "in backout.toml" in backout("freeze", "--list", cwd=tmp_path).stdout
