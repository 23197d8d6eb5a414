"""Invariant 11, hostile filesystems: no writing through planted links, no re-moding folders backout did
not create, 0700/0600 whatever the umask, no name that leaves its folder, no secret in a readable file."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from backout.config import NotifySettings
from backout.fsutil import ensure_private_dir
from backout.history import deployment_state
from backout.notify import Notifier
from backout.notify.message import Message
from backout_cli import backout, backout_json
from engine_proc import DEFAULT_KEY, free_port

BIN = Path(sys.executable).parent
ENV = {"ENGINE_API_KEY": DEFAULT_KEY}
MESSAGE = Message("rollback-started", "Rolling back engine to 2.3.1", "engine", incident_id="INC-1")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _brain(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE knowledge_store (id INTEGER PRIMARY KEY, fact TEXT)")
    conn.executemany("INSERT INTO knowledge_store (fact) VALUES (?)", [(f"fact {i}",) for i in range(50)])
    conn.commit()
    conn.close()
    return path


def _config(folder: Path, body: str, name: str = "engine", process: bool = False) -> Path:
    _brain(folder / "brain.sqlite")
    config = folder / "backout.toml"
    text = f'{body}\n[deployments."{name}"]\nbrain = "brain.sqlite"\n'
    if process:  # a runtime, so that commands which switch versions get as far as they can
        text += (f'runtime = "process"\n\n[deployments."{name}".process]\n'
                 f'command = "{BIN}/engine serve --release {{version}} --brain {{brain}} --port {free_port()}"\n'
                 f'check = "{BIN}/engine releases --changelog {{version}}"\n')
    config.write_text(text)
    return config


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)  # children started inside inherit it
    try:
        yield
    finally:
        os.umask(old)


def _victim(folder: Path, mode: int = 0o644) -> Path:
    """A file someone else owns in spirit: backout must neither write into it nor change its mode."""
    folder.mkdir(parents=True, exist_ok=True)
    victim = folder / "victim.txt"
    victim.write_text("do not touch\n")
    victim.chmod(mode)
    return victim


# -- links planted where backout writes ---------------------------------------------------------


def test_notify_file_that_is_a_planted_link_is_not_written_through(tmp_path: Path) -> None:
    victim = _victim(tmp_path / "elsewhere")
    path = tmp_path / "notify" / "messages.jsonl"
    path.parent.mkdir()
    path.symlink_to(victim)
    [delivery] = Notifier(NotifySettings(file=path)).broadcast(MESSAGE)
    assert not delivery.ok and "symbolic link" in delivery.detail, delivery.detail
    assert victim.read_text() == "do not touch\n" and _mode(victim) == 0o644


def test_notify_file_that_is_a_hard_link_is_not_written_into(tmp_path: Path) -> None:
    victim = _victim(tmp_path / "elsewhere")
    path = tmp_path / "messages.jsonl"
    os.link(victim, path)
    [delivery] = Notifier(NotifySettings(file=path)).broadcast(MESSAGE)
    assert not delivery.ok and "hard link" in delivery.detail, delivery.detail
    assert victim.read_text() == "do not touch\n" and _mode(victim) == 0o644


def test_history_append_refuses_a_planted_link(tmp_path: Path) -> None:
    config = _config(tmp_path, 'state_dir = "state"')
    victim = _victim(tmp_path / "elsewhere")
    cfg = ["--config", str(config)]
    assert backout("freeze", "2.4.0", "--reason", "bad", "--yes", *cfg).returncode == 0
    (tmp_path / "state" / "history.jsonl").symlink_to(victim)
    out = backout("unfreeze", "2.4.0", "--reason", "fixed", "--yes", *cfg)
    assert out.returncode == 3 and "symbolic link" in out.stderr, out.stderr
    assert victim.read_text() == "do not touch\n" and _mode(victim) == 0o644


def test_lock_file_refuses_a_planted_link(tmp_path: Path) -> None:
    config = _config(tmp_path, 'state_dir = "state"', process=True)
    victim = _victim(tmp_path / "elsewhere")
    folder = deployment_state(tmp_path / "state", "engine")
    folder.mkdir(parents=True)
    (folder / "operation.lock").symlink_to(victim)
    out = backout("stop", "--yes", "--config", str(config))
    assert out.returncode == 3 and "symbolic link" in out.stderr, out.stderr
    assert victim.read_text() == "do not touch\n" and _mode(victim) == 0o644


# -- folders backout did not create -------------------------------------------------------------


def test_snapshot_into_a_linked_folder_leaves_the_target_mode(tmp_path: Path) -> None:
    brain = _brain(tmp_path / "brain.sqlite")
    target = tmp_path / "big-disk" / "snaps"
    target.mkdir(parents=True)
    target.chmod(0o755)
    (tmp_path / "pub").mkdir(mode=0o755)
    (tmp_path / "pub" / "snaps").symlink_to(target)
    out = backout("snapshot", "create", "--brain", str(brain), "--into", str(tmp_path / "pub" / "snaps"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert _mode(target) == 0o755  # the operator's folder keeps its mode; the snapshot files are 0600
    assert {_mode(p) for p in target.iterdir()} == {0o600}


def test_snapshot_into_a_link_others_could_have_planted_is_refused(tmp_path: Path) -> None:
    brain = _brain(tmp_path / "brain.sqlite")
    target = tmp_path / "victim-folder"
    target.mkdir()
    target.chmod(0o755)
    pub = tmp_path / "pub"
    pub.mkdir()
    pub.chmod(0o777)  # anyone may create entries here, so a link here may not be the operator's
    (pub / "snaps").symlink_to(target)
    out = backout("snapshot", "create", "--brain", str(brain), "--into", str(pub / "snaps"), cwd=tmp_path)
    assert out.returncode == 3 and "symbolic link" in out.stderr and str(target) in out.stderr, out.stderr
    assert list(target.iterdir()) == [] and _mode(target) == 0o755


def test_an_existing_state_dir_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    config = _config(shared, 'state_dir = "."')
    cfg = ["--config", str(config)]
    assert backout("freeze", "2.4.0", "--reason", "bad", "--yes", *cfg).returncode == 0
    out = backout("unfreeze", "2.4.0", "--reason", "fixed", "--yes", *cfg)
    assert out.returncode == 0, out.stderr
    assert (shared / "history.jsonl").is_file()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # sticky bit and all
    assert _mode(deployment_state(shared, "engine")) == 0o700  # what backout made is private


def test_snapshot_into_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    brain = _brain(tmp_path / "brain.sqlite")
    into = tmp_path / "team-snapshots"
    into.mkdir()
    into.chmod(0o1777)
    out = backout("snapshot", "create", "--brain", str(brain), "--into", str(into), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # sticky: others cannot replace backout's files there, so no warning either
    assert stat.S_IMODE(into.stat().st_mode) == 0o1777 and "warning" not in out.stderr


def test_a_folder_anyone_can_write_is_used_as_it_is_with_one_warning(tmp_path: Path) -> None:
    brain = _brain(tmp_path / "brain.sqlite")
    into = tmp_path / "open-snapshots"
    into.mkdir()
    into.chmod(0o777)
    out = backout("snapshot", "create", "--brain", str(brain), "--into", str(into), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count(f"warning: any user can write in {into}") == 1, out.stderr
    assert stat.S_IMODE(into.stat().st_mode) == 0o777


def test_ensure_private_dir_creates_every_missing_folder_0700_whatever_the_umask(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    with _umask(0o000):
        ensure_private_dir(existing / "a" / "b" / "c")
    assert [_mode(existing / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    assert _mode(existing) == 0o755


def _made_by_backout(root: Path, service_files: set[str]) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if name not in service_files:
                yield Path(folder) / name


def test_folders_0700_and_files_0600_under_umask_000(tmp_path: Path) -> None:
    port = free_port()
    with _umask(0o000):
        out = backout("init", "--runtime", "process", "--profile", "engine",
                      "--command", f"{BIN}/engine serve --release {{version}} --brain {{brain}} --port {{port}}",
                      "--check", f"{BIN}/engine releases --changelog {{version}}", "--port", str(port),
                      "--brain", "data/brain.sqlite", "--health-url", f"http://127.0.0.1:{port}/health",
                      "--pass-env", "ENGINE_API_KEY", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        config = tmp_path / "backout.toml"
        config.write_text(config.read_text().replace('state_dir = ".backout"', 'state_dir = "var/lib/backout"')
                          .replace('drain_timeout = "30s"', 'drain_timeout = "10s"')
                          + '\n[deployments.engine.notify]\nfile = "log/notify/messages.jsonl"\n')
        (tmp_path / "data").mkdir()
        cfg = ["--config", str(config)]
        try:
            assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
            assert backout("snapshot", "create", "--yes", *cfg, env=ENV).returncode == 0
            assert backout("freeze", "2.4.0", "--reason", "bad", "--yes", *cfg).returncode == 0
        finally:
            assert backout("stop", "--yes", *cfg, env=ENV).returncode == 0
    Notifier(NotifySettings(file=tmp_path / "log" / "notify" / "messages.jsonl")).broadcast(MESSAGE)
    with _umask(0o000):  # the library too, not only the CLI
        Notifier(NotifySettings(file=tmp_path / "log2" / "deep" / "messages.jsonl")).broadcast(MESSAGE)
    service = {"brain.sqlite", "brain.sqlite-wal", "brain.sqlite-shm"}
    wrong = {str(p.relative_to(tmp_path)): oct(_mode(p))
             for root in ("var", "log", "log2") for p in [tmp_path / root, *_made_by_backout(tmp_path / root, service)]
             if _mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert wrong == {}
    assert _mode(config) == 0o600 and _mode(tmp_path / "data") == 0o777  # the operator's folder: untouched


# -- names that would leave their folder --------------------------------------------------------


def test_a_deployment_name_that_leaves_its_folder_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    config = _config(inner, 'state_dir = "state"', name="../../evil-dep")
    out = backout("snapshot", "create", "--yes", "--config", str(config))
    assert out.returncode == 2 and "deployment name '../../evil-dep'" in out.stderr, out.stderr
    assert sorted(p.name for p in inner.iterdir()) == ["backout.toml", "brain.sqlite"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and [p.name for p in inner.parent.iterdir()] == ["b"]


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "-x", "x\x00y", "", "x" * 129])
def test_config_refuses_deployment_names_that_are_not_one_plain_file_name(tmp_path: Path, name: str) -> None:
    from backout.config import Config

    with pytest.raises(ValueError, match="refused because backout uses it in file names"):
        Config.model_validate({"deployments": {name: {"brain": "brain.sqlite"}}})
    Config.model_validate({"deployments": {"engine-2_staging.eu": {"brain": "brain.sqlite"}}})


def test_state_paths_of_any_deployment_stay_in_the_state_folder(tmp_path: Path) -> None:
    for name in ["../../evil-dep", "..", ".", "", "/abs/brain.sqlite", "a\x00b", "-rf", "x" * 300]:
        folder = deployment_state(tmp_path, name)
        assert folder.parent == tmp_path / "deployments" and folder.name not in ("", ".", "..")
        assert not folder.name.startswith((".", "-")) and "/" not in folder.name and "\x00" not in folder.name


@pytest.mark.parametrize("argv", [["switch", "../../x"], ["upgrade", "../../x"], ["rollback", "--to", "../x"],
                                  ["freeze", "--reason", "r", "../../x"], ["switch", "--", "-x"],
                                  ["freeze", "--reason", "r", "a/b"]])
def test_a_version_that_would_leave_its_folder_is_refused(tmp_path: Path, argv: list[str]) -> None:
    config = _config(tmp_path, 'state_dir = "state"', process=True)
    out = backout(argv[0], "--yes", "--config", str(config), *argv[1:])
    assert out.returncode == 2 and "version" in out.stderr and "file names" in out.stderr, out.stderr
    assert not (tmp_path / "state").exists()


# -- secrets in the config ----------------------------------------------------------------------


def _init(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return backout("init", "--runtime", "process", "--command", "engine serve --release {version} --port {port}",
                   "--port", "8000", "--brain", "brain.sqlite", *extra, cwd=folder)


@pytest.mark.parametrize("pair", ["ENGINE_API_KEY=k3y-v4lue", "AD_ENCRYPTION_KEY=abc", "DB_PASSWORD=hunter2",
                                  "DATABASE_URL=postgres://app:hunter2@db/app", "OPENAI=sk-abcdef0123456789",
                                  "OPAQUE=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5"])
def test_init_refuses_a_secret_in_env(tmp_path: Path, pair: str) -> None:
    with _umask(0o022):
        out = _init(tmp_path, "--env", pair)
    assert out.returncode == 2 and "--pass-env" in out.stderr and "secret" in out.stderr, out.stderr
    assert pair.split("=", 1)[1] not in out.stderr
    assert not (tmp_path / "backout.toml").exists()


def test_init_writes_its_config_0600(tmp_path: Path) -> None:
    with _umask(0o022):
        out = _init(tmp_path, "--env", "ENGINE_TURN_MS=20", "--env", "LOG_LEVEL=debug", "--pass-env", "ENGINE_API_KEY")
    assert out.returncode == 0, out.stderr
    config = tmp_path / "backout.toml"
    assert _mode(config) == 0o600 and 'ENGINE_TURN_MS = "20"' in config.read_text()
