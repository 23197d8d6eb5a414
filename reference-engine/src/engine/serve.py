"""Starting one Engine process: check the inputs, bind the port, run until drained."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import tempfile
from pathlib import Path

import uvicorn

from engine.app import create_app
from engine.core import EngineCore
from engine.drain import DrainingServer
from engine.settings import Settings, SettingsError

__all__ = ["check_brain_path", "bind", "run"]


def check_brain_path(brain: Path) -> None:
    """Fail early, with what to do, when the brain cannot be created or opened for writing."""
    parent = brain.parent
    if brain.is_dir():
        raise SettingsError(f"brain path {brain} is a directory; give the path of the SQLite file")
    if not parent.is_dir():
        raise SettingsError(f"folder {parent} of the brain does not exist; create it first")
    try:  # probe for real: permissions, read-only mounts and full disks all show here
        fd, probe = tempfile.mkstemp(prefix=".engine-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SettingsError(
            f"folder {parent} is not writable ({exc.strerror}); the brain needs its -wal and -shm files there"
        ) from None
    if brain.exists():
        try:
            with brain.open("r+b"):
                pass
        except OSError as exc:
            raise SettingsError(f"brain {brain} cannot be opened for writing ({exc.strerror})") from None
    if brain.exists() and brain.stat().st_size > 0:
        with brain.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise SettingsError(f"{brain} is not an SQLite database; point --brain at the brain file")


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a port in use is reported before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(f"port {port} on {host} is already in use; stop what holds it or pick another --port") from None
        raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run(settings: Settings) -> int:
    """Serve until a drain completes; returns the process exit code."""
    check_brain_path(settings.brain)
    sock = bind(settings.host, settings.port)
    # Make a new brain 0600 before SQLite creates it with its default 0644.
    if not settings.brain.exists():
        fd = os.open(settings.brain, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    core = EngineCore(settings)
    core.log.info("engine starting", version=settings.release.version, port=settings.port,
                  sqlite=sqlite3.sqlite_version)
    config = uvicorn.Config(create_app(core), log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5, server_header=False)
    server = DrainingServer(config, core)
    server.run(sockets=[sock])
    return 0
