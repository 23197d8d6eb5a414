"""The Engine's SIGTERM handler: it must not write a log line itself.

A Python signal handler runs between two bytecodes of whatever the main thread was doing — possibly
inside JsonLog.emit with the log's lock held. The handler used to log "drain started" directly and
then waited forever on that lock: the drain never began and the process had to be SIGKILLed after
the stop timeout (seen in CI as `stop() == -9`, about one stop in twenty under load).
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
from pathlib import Path

import uvicorn

from engine.core import EngineCore
from engine.drain import DrainingServer
from engine.logs import JsonLog
from engine.releases import get_release
from engine.settings import Settings


def _server(tmp_path: Path, version: str = "2.3.1") -> tuple[DrainingServer, io.StringIO]:
    stream = io.StringIO()
    settings = Settings(release=get_release(version), brain=tmp_path / "b.sqlite", host="127.0.0.1", port=1,
                        key_hash="0" * 64)
    core = EngineCore(settings, log=JsonLog(stream))
    core.phase = "ready"
    return DrainingServer(uvicorn.Config(app=None), core), stream


def test_sigterm_while_a_log_line_is_being_written_starts_the_drain(tmp_path: Path) -> None:
    server, stream = _server(tmp_path)
    with server.core.log._lock:  # the main thread is inside emit() when the signal arrives
        server.handle_exit(signal.SIGTERM, None)
    assert server.core.phase == "draining"
    assert stream.getvalue() == ""  # nothing written from the handler
    asyncio.run(server.on_tick(1))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["drain started", "drain complete"]
    assert lines[0]["signal"] == "SIGTERM" and server.should_exit
