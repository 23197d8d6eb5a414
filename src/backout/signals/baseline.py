"""The baseline of a good version (requests, health, evals) and the series kept between checks:
health probes and customer reports, each in the deployment's state folder."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backout.errors import EXIT_USAGE, BackoutError
from backout.fsutil import atomic_write_json, ensure_private_dir, open_private
from backout.signals.model import EvalRun, HealthSample, RequestSample

__all__ = ["Baseline", "StateFiles", "rows_to_requests", "requests_to_rows"]


def requests_to_rows(requests: list[RequestSample]) -> list[list[Any]]:
    """Compact rows [ts, status, ms, task_id, code, path] (also the scenario files' form)."""
    return [[r.ts, r.status, r.duration_ms, r.task_id, r.code, r.path] for r in requests]


def rows_to_requests(rows: list[list[Any]]) -> list[RequestSample]:
    """Inverse of requests_to_rows."""
    out = []
    for row in rows:
        ts, status, ms, *rest = row
        task, code, path = (rest + [None, None, ""])[:3]
        out.append(RequestSample(float(ts), int(status), None if ms is None else float(ms), task, path or "", code))
    return out


@dataclass
class Baseline:
    """What the good version looked like before the upgrade."""

    version: str | None
    captured_at: float
    requests: list[RequestSample] = field(default_factory=list)
    health: HealthSample | None = None
    evals: EvalRun | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)  # the stretches of time its requests come from

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"version": self.version, "captured_at": self.captured_at,
                "requests": requests_to_rows(self.requests),
                "health": self.health.__dict__ if self.health else None,
                "evals": {"cases": self.evals.cases, "ts": self.evals.ts, "version": self.evals.version,
                          "source": self.evals.source} if self.evals else None,
                "windows": self.windows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Baseline":
        """Inverse of to_dict."""
        health = data.get("health")
        evals = data.get("evals")
        return cls(data.get("version"), float(data["captured_at"]), rows_to_requests(data.get("requests", [])),
                   HealthSample(**{**health, "failing": tuple(health.get("failing", ()))}) if health else None,
                   EvalRun(**evals) if evals else None, list(data.get("windows") or []))

    def summary(self) -> dict[str, Any]:
        """Counts for people: requests, error rate, p95, eval cases."""
        n = len(self.requests)
        errors = sum(r.error for r in self.requests)
        latencies = sorted(r.duration_ms for r in self.requests if r.duration_ms is not None)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None
        return {"version": self.version, "captured_at": self.captured_at, "requests": n,
                "error_rate": round(errors / n, 4) if n else None, "p95_ms": p95,
                "healthy": self.health.ok if self.health else None,
                "eval_cases": len(self.evals.cases) if self.evals else None,
                "eval_failing": self.evals.failed if self.evals else None, "windows": self.windows}


class StateFiles:
    """The verdict's files in a deployment's state folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save_baseline(self, baseline: Baseline) -> Path:
        """Store the baseline (replacing the previous one)."""
        ensure_private_dir(self.folder)
        path = self.folder / "baseline.json"
        atomic_write_json(path, baseline.to_dict())
        return path

    def load_baseline(self) -> Baseline | None:
        """The stored baseline, if any."""
        path = self.folder / "baseline.json"
        try:
            return Baseline.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise BackoutError(f"baseline {path} is corrupt ({type(exc).__name__}); capture it again "
                               "(backout baseline capture --yes)", EXIT_USAGE) from None

    def _append(self, name: str, record: dict[str, Any]) -> None:
        ensure_private_dir(self.folder)
        fd = open_private(self.folder / name)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)

    def _read(self, name: str, since: float) -> list[dict[str, Any]]:
        try:
            lines = (self.folder / name).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if float(record.get("ts", 0)) >= since:
                out.append(record)
        return out

    def add_health(self, sample: HealthSample) -> None:
        """Keep a probe, so later checks see how long health has been failing."""
        self._append("health.jsonl", {**sample.__dict__, "failing": list(sample.failing)})

    def health_since(self, since: float) -> list[HealthSample]:
        """Probes taken since `since`, oldest first."""
        return [HealthSample(float(r["ts"]), bool(r["ok"]), r.get("status_code"), tuple(r.get("failing", ())),
                             r.get("reason", "")) for r in self._read("health.jsonl", since)]

    def add_report(self, text: str, version: str | None) -> None:
        """Record a customer report (it counts as confirmed breakage)."""
        self._append("reports.jsonl", {"ts": time.time(), "text": text, "version": version})

    def reports_since(self, since: float) -> list[str]:
        """Customer reports recorded since `since`."""
        return [str(r["text"]) for r in self._read("reports.jsonl", since)]

    def save_verdict(self, verdict: dict[str, Any], version: str | None) -> None:
        """Keep the latest verdict (a rollback cites it as the symptom and its evidence)."""
        ensure_private_dir(self.folder)
        atomic_write_json(self.folder / "verdict.json", {"ts": time.time(), "version": version, **verdict})

    def last_verdict(self, since: float) -> dict[str, Any] | None:
        """The latest verdict computed since `since`, if any."""
        try:
            data: dict[str, Any] = json.loads((self.folder / "verdict.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return data if float(data.get("ts", 0)) >= since else None
