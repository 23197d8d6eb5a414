"""The running Engine: brain access on one thread, boot-time migrations, turns, drain state."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from engine.brain import Brain, TurnRecord, open_connection, utcnow
from engine.logs import JsonLog
from engine.metrics import EngineMetrics
from engine.schema import SchemaState, migrate
from engine.settings import Settings
from engine.turn import understand

__all__ = ["EngineCore", "TurnEvent"]

T = TypeVar("T")
TurnEvent = tuple[str, dict[str, Any]]
_DONE = ("__done__", {})


class EngineCore:
    """State of one Engine process. All brain access runs on a single worker thread."""

    def __init__(self, settings: Settings, log: JsonLog | None = None) -> None:
        self.settings = settings
        self.release = settings.release
        self.log = log or JsonLog()
        self.metrics = EngineMetrics(self.release.version)
        self.started = time.monotonic()
        self.phase = "starting"  # starting -> ready | error; ready -> draining
        self.schema: SchemaState | None = None
        self.error_code: str | None = None
        self.error_message = ""
        self.brain: Brain | None = None
        self.asset_directory = "ok"
        self.turns: set[asyncio.Task[None]] = set()
        self.working_memory: list[tuple[str, str, str, str]] = []
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brain")
        self._conn: sqlite3.Connection | None = None

    # -- brain access --------------------------------------------------------------------------

    async def db(self, fn: Callable[[Brain], T]) -> T:
        """Run `fn(brain)` on the brain thread."""
        brain = self.brain
        if brain is None:
            raise RuntimeError("brain is not open")
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, brain)

    # -- boot ----------------------------------------------------------------------------------

    async def boot(self) -> None:
        """Open the brain and apply migrations; /health stays 503 'starting' meanwhile."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._db, self._open_and_migrate)
        except sqlite3.DatabaseError as exc:
            self._fail("DATABASE_UNAVAILABLE", f"cannot open the brain {self.settings.brain}: {exc}")
            return
        if self.release.bug == "crash":
            self.log.error(
                "fatal error during start-up: unhandled exception in catalog loader",
                code="BOOT_CRASH", version=self.release.version,
            )
            sys.stdout.flush()
            os._exit(70)
        if self.phase == "starting":
            self.phase = "ready"
            self.log.info("engine ready", version=self.release.version, schema=self.schema_head)

    def _open_and_migrate(self) -> None:
        self._conn = open_connection(self.settings.brain)
        os.chmod(self.settings.brain, 0o600)
        try:
            state = migrate(self._conn, self.release)
        except sqlite3.DatabaseError as exc:
            self._fail("MIGRATION_FAILED", f"migration failed: {exc}")
            return
        self.schema = state
        if not state.ok:
            self._fail(state.status, state.message)
            return
        self.brain = Brain(self._conn, state.head)
        for mid in state.applied:
            self.brain.record_event("migration_run", None, {"id": mid, "version": self.release.version})
            self.log.info("migration applied", migration=mid, version=self.release.version)
        self._check_asset_directory()

    def _check_asset_directory(self) -> None:
        """A brain's stored credentials only decrypt with the AD_ENCRYPTION_KEY that wrote them."""
        assert self._conn is not None
        if self.release.bug == "health":
            self.asset_directory = "error"
            return
        row = self._conn.execute("SELECT value FROM engine_meta WHERE key = 'ad_key_fp'").fetchone()
        key = self.settings.ad_key
        if key is None:
            self.asset_directory = "error" if row else "ok"
            return
        fingerprint = hashlib.sha256(b"engine-ad-key:" + key.encode()).hexdigest()
        if row is None:
            self._conn.execute("INSERT INTO engine_meta (key, value) VALUES ('ad_key_fp', ?)", (fingerprint,))
        self.asset_directory = "ok" if row is None or row[0] == fingerprint else "error"

    def _fail(self, code: str, message: str) -> None:
        self.phase = "error"
        self.error_code, self.error_message = code, message
        self.log.error(message, code=code, version=self.release.version)

    @property
    def schema_head(self) -> int | None:
        """Migration head recorded in the brain, once known."""
        return self.schema.head if self.schema else None

    # -- health --------------------------------------------------------------------------------

    def llm_provider(self) -> str:
        """'error' while the simulated provider outage file exists."""
        outage = self.settings.llm_outage_file
        return "error" if outage is not None and outage.exists() else "ok"

    def health(self) -> tuple[int, dict[str, Any]]:
        """Status code and body of GET /health."""
        database = "ok" if self.phase in ("ready", "draining") else "error"
        if self.phase == "starting":
            database = "starting"
        subsystems = {
            "database": database,
            "llm_provider": self.llm_provider(),
            "asset_directory": self.asset_directory if self.brain else "unknown",
        }
        if self.phase == "ready":
            status = "ok" if all(v == "ok" for v in subsystems.values()) else "degraded"
        else:
            status = {"starting": "starting", "draining": "draining"}.get(self.phase, "error")
        body: dict[str, Any] = {
            "status": status,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "subsystems": subsystems,
            "version": self.release.version,
            "schema": self.schema_head,
            "in_flight": len(self.turns),
        }
        if self.error_code:
            body["error"] = {"code": self.error_code, "message": self.error_message}
        return (200 if status == "ok" else 503), body

    # -- turns ---------------------------------------------------------------------------------

    def start_turn(self, task_id: str, request_id: str, message: str) -> asyncio.Queue[TurnEvent]:
        """Run a turn in its own task (it finishes even if the client goes away)."""
        queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
        task = asyncio.create_task(self._turn(task_id, request_id, message, queue))
        self.turns.add(task)
        self.metrics.in_flight.set(len(self.turns))
        task.add_done_callback(self._turn_done)
        return queue

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        self.turns.discard(task)
        self.metrics.in_flight.set(len(self.turns))
        if not task.cancelled() and task.exception() is not None:
            self.metrics.turns.labels(outcome="failed").inc()

    async def _turn(self, task_id: str, request_id: str, message: str, queue: asyncio.Queue[TurnEvent]) -> None:
        record = TurnRecord(task_id, request_id, message, "", utcnow(),
                            channel_ttl_ms=self.settings.channel_ttl_s * 1000)

        def emit(name: str, data: dict[str, Any]) -> None:
            record.events.append((int(time.time() * 1000), name, data))
            queue.put_nowait((name, data))

        try:
            model_s = self.settings.turn_ms * self.release.latency_factor / 1000
            emit("thread_lifecycle", {"phase": "started", "task_id": task_id, "request_id": request_id})
            await asyncio.sleep(model_s / 2)
            seen = understand(message, swap_facts=self.release.bug == "eval")
            record.facts, record.people, record.mcp = seen.facts, seen.people, seen.mcp
            record.reply = seen.reply()
            for tool, action, target in seen.mcp:
                emit("tool_call", {"tool": f"{tool}.{action}", "input": {"target": target}})
                emit("tool_result", {"tool": f"{tool}.{action}", "output": "ok"})
            emit("text_delta", {"text": record.reply})
            emit("usage", {"input_tokens": len(message.split()) * 4, "output_tokens": len(record.reply.split()) * 4,
                           "cache_hit_tokens": 0})
            await asyncio.sleep(model_s / 2)
            record.steps = [{"step": "understand", "facts": len(seen.facts), "people": len(seen.people)},
                            {"step": "respond", "chars": len(record.reply)}]
            now = utcnow()
            self.working_memory += [(task_id, "last_message", message[:500], now),
                                    (task_id, "people", ",".join(seen.people), now)]
            completed = {"phase": "completed", "task_id": task_id, "request_id": request_id}
            record.events.append((int(time.time() * 1000), "thread_lifecycle", completed))
            await self.db(lambda b: b.record_turn(record))
            queue.put_nowait(("thread_lifecycle", completed))
            self.metrics.turns.labels(outcome="completed").inc()
        except Exception as exc:  # the stream must end with an error event, not hang
            self.log.error("turn failed", task_id=task_id, request_id=request_id, code="INTERNAL_ERROR",
                           error=str(exc))
            queue.put_nowait(("error", {"error": "INTERNAL_ERROR", "message": "the turn failed"}))
            queue.put_nowait(("thread_lifecycle", {"phase": "errored", "task_id": task_id}))
            raise
        finally:
            queue.put_nowait(_DONE)

    # -- working memory and shutdown -----------------------------------------------------------

    async def flush_working_memory(self) -> int:
        """Persist buffered working memory."""
        entries, self.working_memory = self.working_memory, []
        if not entries or self.brain is None:
            return 0
        return await self.db(lambda b: b.flush_working_memory(entries))

    async def flusher(self) -> None:
        """Background task: flush working memory every `flush_interval_s`."""
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)
            try:
                await self.flush_working_memory()
            except sqlite3.Error as exc:
                self.log.error("working memory flush failed", code="DATABASE_UNAVAILABLE", error=str(exc))

    async def close(self) -> None:
        """Flush working memory, checkpoint the WAL and close the brain."""
        flushed = await self.flush_working_memory()
        if self._conn is not None:
            conn = self._conn

            def _close() -> None:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                conn.close()

            await asyncio.get_running_loop().run_in_executor(self._db, _close)
        self._db.shutdown(wait=True)
        self.log.info("engine stopped", version=self.release.version, working_memory_flushed=flushed)

    def is_done(self, event: TurnEvent) -> bool:
        """True for the queue's end marker."""
        return event is _DONE
