"""Prometheus metrics of one Engine process, served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["EngineMetrics"]

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)


class EngineMetrics:
    """Request, turn and error counters in a registry of their own (no global state)."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "engine_requests", "HTTP requests", ["method", "path", "status"], registry=r
        )
        self.duration = Histogram(
            "engine_request_duration_seconds", "Request duration", ["path"], buckets=_BUCKETS,
            registry=r,
        )
        self.errors = Counter("engine_errors", "Error responses by code", ["code"], registry=r)
        self.turns = Counter("engine_turns", "Agent turns by outcome", ["outcome"], registry=r)
        self.in_flight = Gauge("engine_in_flight_turns", "Turns running now", registry=r)
        self.info = Gauge("engine_build_info", "Running release", ["version"], registry=r)
        self.info.labels(version=version).set(1)

    def observe(self, method: str, path: str, status: int, seconds: float, code: str | None) -> None:
        """Record one finished request."""
        self.requests.labels(method=method, path=path, status=str(status)).inc()
        self.duration.labels(path=path).observe(seconds)
        if code:
            self.errors.labels(code=code).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
