"""Request samples for the verdict's error-rate and latency tests, from three kinds of source.

Every source answers `samples(since, until)`: the requests that finished in `[since, until)`
(epoch seconds), as `RequestSample`s, oldest first.

- `LogSource` reads the service's JSON log lines: one sample per request line, exact. This is
  the default, because the Engine has no Prometheus exporter.
- `ScrapeSource` reads a Prometheus text endpoint (the reference Engine's `GET /metrics`)
  itself, keeps its readings, and turns the counter and histogram *differences* between two
  readings into samples.
- `PrometheusSource` asks a Prometheus server (HTTP API, `/api/v1/query_range`) for the same
  series over the range, one point per `step`.

The two metric sources only know counts, so their samples are an approximation:

- **Counts and statuses are exact** per interval between two readings (two scrapes, or two
  evaluation steps): one sample per request counted, with its status label.
- **Latency** comes from the duration histogram's bucket counts in that interval: the requests
  of a bucket are spread evenly inside it, between its lower and upper bound (the same linear
  interpolation `histogram_quantile` uses), and the requests of the `+Inf` bucket get the highest
  finite bound. Quantiles of the samples are therefore what `histogram_quantile` would say, within
  one bucket's width. The histogram has no `status` label, so every status gets an even
  cross-section of the interval's latencies.
- **Time** inside an interval is unknown: samples are placed at evenly spread instants of the
  interval (in golden-ratio order, so that statuses and latencies carry no invented trend), and a
  range that cuts an interval keeps the share of its samples that falls inside. Resolution is
  therefore one interval: scrape often, or choose a small `step`.
- With a Prometheus query that returns quantiles instead of buckets (`histogram_quantile`),
  every request of a step gets that value when there is one quantile (right for that quantile,
  too high for the median), or is spread piecewise-linearly between several quantiles labelled
  `quantile` (e.g. built with `label_replace`).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, TypeVar
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from backout.errors import EXIT_ENVIRONMENT, BackoutError
from backout.fsutil import atomic_write_json
from backout.signals.model import RequestSample

__all__ = [
    "LogSource", "MetricsSourceError", "PrometheusSource", "RequestSource", "Scrape", "ScrapeSource",
    "lines_from_file", "parse_request_line", "parse_scrape",
]

K = TypeVar("K")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_LOG_SLACK = 1.0  # ask the runtime for a little more: `docker logs --since` has 1 s resolution
_NOW_SLACK = 1.0  # an `until` at most this old when samples() is called means "now"


class MetricsSourceError(BackoutError):
    """A metrics source could not be read; the message says which and what to check."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_ENVIRONMENT)


class RequestSource(Protocol):
    """Anything that can list the requests finished in a time range."""

    def samples(self, since: float, until: float) -> list[RequestSample]:
        """Requests that finished in [since, until), epoch seconds, oldest first."""
        ...


# -- logs ------------------------------------------------------------------------------------------

_TIME_KEYS = ("ts", "timestamp", "time", "@timestamp")
_STATUS_KEYS = (("status",), ("status_code",), ("statusCode",), ("http_status",), ("response_status",),
                ("http", "status_code"), ("http", "status"), ("response", "status"),
                ("response", "status_code"), ("res", "statusCode"))
_MS_KEYS = ("duration_ms", "latency_ms", "elapsed_ms", "response_time_ms", "request_time_ms", "took_ms",
            "responseTime")
_SECONDS_KEYS = ("duration_s", "duration_seconds", "latency_s", "latency_seconds", "duration", "latency",
                 "elapsed", "request_time", "response_time")
_PATH_KEYS = (("path",), ("route",), ("request_path",), ("url",), ("uri",), ("http", "path"),
              ("http", "url"), ("request", "path"), ("request", "url"), ("req", "url"))
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DURATION_TEXT = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|μs|ms|s|m)?\s*")


def lines_from_file(path: Path) -> Callable[[datetime | None], list[str]]:
    """A `lines` callable for LogSource over a plain log file (a missing file has no lines)."""

    def lines(since: datetime | None) -> list[str]:
        try:
            return path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    return lines


class LogSource:
    """Request samples from the service's JSON log lines: exact, one per request line.

    `lines(since)` returns the log lines from about `since` on (a Runtime's `logs` method fits);
    lines that are not JSON, or not a request, are skipped. Only requests `counts(path)` accepts
    are kept (None: every request; a service profile's `counts` fits).
    """

    def __init__(self, lines: Callable[[datetime | None], list[str]],
                 counts: Callable[[str | None], bool] | None = None) -> None:
        self.lines = lines
        self.counts = counts

    def samples(self, since: float, until: float) -> list[RequestSample]:
        """Requests logged as finished in [since, until), oldest first."""
        start = datetime.fromtimestamp(since - _LOG_SLACK, tz=timezone.utc)
        found = []
        for line in self.lines(start):
            sample = parse_request_line(line)
            if sample is None or not since <= sample.ts < until:
                continue
            if self.counts is not None and not self.counts(sample.path):
                continue
            found.append(sample)
        found.sort(key=lambda s: s.ts)
        return found


def parse_request_line(line: str) -> RequestSample | None:
    """The request a JSON log line records, or None when it records no finished request.

    A request line has a time, an HTTP status and a duration. Lines that are not JSON are read as access
    log lines (parse_access_line). Understood in JSON: the Engine's own lines
    (`ts`, `status`, `duration_ms`, `path`, `task_id`, `code`) and the usual spellings of other
    services (`timestamp`/`time`, `status_code`, `latency_ms`, `duration` in seconds, a duration
    text such as "12.5ms", an access-log `request` like "GET /items HTTP/1.1"). A prefix before
    the JSON object (`docker compose logs` without --no-log-prefix) is ignored.
    """
    record = _json_object(line)
    if record is None:
        return parse_access_line(line)
    status = _status(record)
    duration = _duration_ms(record)
    ts = _timestamp(record)
    if status is None or duration is None or ts is None:
        return None
    task_id = record.get("task_id", record.get("taskId"))
    return RequestSample(ts=ts, status=status, duration_ms=duration,
                         task_id=str(task_id) if task_id not in (None, "") else None,
                         path=_path(record) or "", code=_code(record))


_ACCESS_REQUEST = re.compile(r'"(?P<method>[A-Z]{3,7}) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>[1-5]\d\d)\b(?P<rest>.*)$')
_CLF_TIME = re.compile(r"\[(?P<day>\d{2}/[A-Z][a-z]{2}/\d{4})[: ](?P<clock>\d{2}:\d{2}:\d{2})(?: (?P<zone>[+-]\d{4}))?\]")
_ISO_TIME = re.compile(r"^\S*?(?P<iso>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)")
# Tornado's access lines (JupyterHub, Jupyter Server, tornado's default log format): level and time (no zone)
# in brackets, then status, method, target (a redirect's " -> location"), "(user@ip)" and the duration in ms.
_TORNADO = re.compile(r"^\[[DIWEC] (?P<stamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?|\d{6} \d{2}:\d{2}:\d{2})"
                      r"(?: [^\]]*)?\] (?P<status>[1-5]\d\d) (?P<method>[A-Z]{3,7}) (?P<target>\S+)(?: -> \S+)? "
                      r"\([^)]*\) (?P<ms>\d+(?:\.\d+)?)ms\s*$")
_TRAILING_DURATION = re.compile(r"^\s+\S+(?:\s+\"[^\"]*\"\s+\"[^\"]*\")?\s+(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|us|µs|s)?\s*$")


def parse_access_line(line: str) -> RequestSample | None:
    """The request an access-log line records: common/combined format (Apache, nginx, gunicorn), Django's
    runserver, tornado's access lines (JupyterHub, Jupyter Server: `[I 2026-12-04 19:01:32.119 JupyterHub
    log:192] 201 POST /path (user@ip) 77.05ms`), or any line with `"METHOD /path HTTP/1.1" STATUS` and a
    time — bracketed CLF time, or an ISO time at its start (`docker compose logs --timestamps`, logging's
    asctime). Times without a zone are UTC. A number after the size (and the quoted referer and user
    agent) is the duration: with a unit (ms, us, s) as written; without one, seconds when it has a decimal point (nginx $request_time,
    gunicorn %(L)s) and microseconds when it has none (gunicorn %(D)s). Without one the sample has no
    duration: it counts for errors, not for latency. None for any other line."""
    tornado = _TORNADO.match(line)
    if tornado is not None:
        return _tornado_sample(tornado)
    found = _ACCESS_REQUEST.search(line)
    if found is None:
        return None
    ts = _access_time(line)
    if ts is None:
        return None  # uvicorn's default access line has no time: it cannot be placed in a window
    return RequestSample(ts=ts, status=int(found["status"]), duration_ms=_access_duration(found["rest"]),
                         path=urlsplit(found["target"]).path or "/")


def _tornado_sample(found: re.Match[str]) -> RequestSample | None:
    stamp = found["stamp"]
    try:
        when = (datetime.strptime(stamp, "%y%m%d %H:%M:%S") if stamp[6] == " "
                else datetime.fromisoformat(stamp))
    except ValueError:
        return None
    return RequestSample(ts=when.replace(tzinfo=timezone.utc).timestamp(), status=int(found["status"]),
                         duration_ms=float(found["ms"]), path=urlsplit(found["target"]).path or "/")


def _access_time(line: str) -> float | None:
    clf = _CLF_TIME.search(line)
    if clf is not None:
        zone = clf["zone"] or "+0000"
        try:
            return datetime.strptime(f"{clf['day']}:{clf['clock']} {zone}", "%d/%b/%Y:%H:%M:%S %z").timestamp()
        except ValueError:
            return None
    iso = _ISO_TIME.match(line)
    if iso is None:
        return None
    try:
        stamp = datetime.fromisoformat(iso["iso"].replace(",", ".").replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


def _access_duration(rest: str) -> float | None:
    found = _TRAILING_DURATION.match(rest)
    if found is None:
        return None
    value, unit = float(found["value"]), found["unit"]
    if unit is None:
        unit = "s" if "." in found["value"] else "us"
    return value * {"ms": 1.0, "s": 1000.0, "us": 0.001, "µs": 0.001}[unit]


def _json_object(line: str) -> dict[str, Any] | None:
    start = line.find("{")
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _lookup(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    value: Any = record
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _status(record: Mapping[str, Any]) -> int | None:
    for keys in _STATUS_KEYS:
        number = _number(_lookup(record, keys))
        if number is not None and number.is_integer() and 100 <= number <= 599:
            return int(number)
    return None


def _duration_ms(record: Mapping[str, Any]) -> float | None:
    for key, scale in [(k, 1.0) for k in _MS_KEYS] + [(k, 1000.0) for k in _SECONDS_KEYS]:
        if key not in record:
            continue
        value = record[key]
        if isinstance(value, str):
            match = _DURATION_TEXT.fullmatch(value)
            if match is None:
                continue
            number, unit = float(match.group(1)), match.group(2)
            ms = number * (_UNIT_MS[unit] if unit else scale)
        else:
            number_or_none = _number(value)
            if number_or_none is None:
                continue
            ms = number_or_none * scale
        if ms >= 0:
            return ms
    return None


def _timestamp(record: Mapping[str, Any]) -> float | None:
    for key in _TIME_KEYS:
        value = record.get(key)
        if value is None or isinstance(value, bool):
            continue
        number = _number(value)
        if number is not None:
            # epoch seconds, or milli-, micro-, nanoseconds by magnitude
            while number > 1e11:
                number /= 1000.0
            return number
        if isinstance(value, str):
            try:
                stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                continue
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=timezone.utc)
            return stamp.timestamp()
    return None


def _path(record: Mapping[str, Any]) -> str | None:
    for keys in _PATH_KEYS:
        value = _lookup(record, keys)
        if isinstance(value, str) and value:
            parts = urlsplit(value)
            return parts.path or "/"
    request = record.get("request")
    if isinstance(request, str):  # an access-log style "GET /items?x=1 HTTP/1.1"
        words = request.split()
        if len(words) >= 2 and words[1].startswith("/"):
            return urlsplit(words[1]).path
    return None


def _code(record: Mapping[str, Any]) -> str | None:
    for keys in (("code",), ("error_code",), ("error", "code")):
        value = _lookup(record, keys)
        if isinstance(value, str) and value:
            return value
    return None


# -- turning counts into samples -------------------------------------------------------------------

def _interleave(counts: Mapping[K, int], sort_key: Callable[[K], Any]) -> list[K]:
    """Each key repeated by its count, mixed evenly (a 3:1 split gives a, a, b, a, ...)."""
    keyed: list[tuple[float, int, K]] = []
    for rank, key in enumerate(sorted(counts, key=sort_key)):
        n = counts[key]
        keyed.extend(((j + 0.5) / n, rank, key) for j in range(n))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [key for _, _, key in keyed]


def _resample(values: Sequence[float], n: int) -> list[float]:
    """`n` values taken evenly from sorted `values` (the same list when the length matches)."""
    if len(values) == n:
        return list(values)
    return [values[min(len(values) - 1, int((i + 0.5) * len(values) / n))] for i in range(n)]


def _bucket_values(cumulative: Mapping[float, float]) -> list[float]:
    """One value per counted observation of a cumulative histogram, spread evenly in its bucket."""
    bounds = sorted(cumulative)
    finite = [b for b in bounds if math.isfinite(b)]
    top = finite[-1] if finite else 0.0
    values: list[float] = []
    lower, seen = 0.0, 0
    for upper in bounds:
        total = max(seen, round(cumulative[upper]))
        count, seen = total - seen, total
        if not math.isfinite(upper):
            values.extend([top] * count)
            continue
        low = min(lower, upper)
        values.extend(low + (upper - low) * (j + 0.5) / count for j in range(count))
        lower = upper
    return values


def _quantile_values(points: Mapping[float, float], n: int) -> list[float]:
    """`n` values following quantile points {q: value}, piecewise-linear, flat outside them."""
    qs = sorted(points)
    out = []
    for i in range(n):
        p = (i + 0.5) / n
        if p <= qs[0]:
            out.append(points[qs[0]])
        elif p >= qs[-1]:
            out.append(points[qs[-1]])
        else:
            hi = next(j for j, q in enumerate(qs) if q >= p)
            q0, q1 = qs[hi - 1], qs[hi]
            out.append(points[q0] + (points[q1] - points[q0]) * (p - q0) / (q1 - q0))
    return out


Outcome = tuple[int, str | None]  # (status, error code)


def _spread(start: float, end: float, outcomes: Mapping[Outcome, int], latencies_ms: Sequence[float],
            path: str) -> list[RequestSample]:
    """Samples for the requests counted in (start, end]: see the module docstring."""
    order = _interleave({k: v for k, v in outcomes.items() if v > 0}, lambda o: (o[0], o[1] or ""))
    if not order:
        return []
    latencies = _resample(sorted(latencies_ms), len(order))
    width = max(0.0, end - start)
    samples = [RequestSample(ts=start + width * (((i + 1) * _GOLDEN) % 1.0), status=status,
                             duration_ms=latencies[i], path=path, code=code)
               for i, (status, code) in enumerate(order)]
    samples.sort(key=lambda s: s.ts)
    return samples


def _status_of(label: str | None) -> int | None:
    try:
        status = int(label) if label is not None else None
    except ValueError:
        return None
    return status if status is not None and 100 <= status <= 599 else None


# -- scraping /metrics ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scrape:
    """One reading of a metrics endpoint, reduced to the counters the verdict needs."""

    ts: float
    requests: dict[str, float]  # status label -> cumulative request count
    buckets: dict[str, float] = field(default_factory=dict)  # `le` label -> cumulative count

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"ts": self.ts, "requests": self.requests, "buckets": self.buckets}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scrape:
        """Back from the JSON form."""
        return cls(float(data["ts"]), {str(k): float(v) for k, v in data["requests"].items()},
                   {str(k): float(v) for k, v in data.get("buckets", {}).items()})


def parse_scrape(text: str, ts: float, path: str | None = None,
                 requests_metric: str = "http_requests_total",
                 duration_metric: str = "http_request_duration_seconds") -> Scrape:
    """Read request counts by status and the duration buckets of `path` (None: all paths) from a
    Prometheus text exposition, summed over every other label."""
    request_names = {requests_metric, requests_metric + "_total"}
    bucket_name = duration_metric + "_bucket"
    requests: dict[str, float] = defaultdict(float)
    buckets: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if path is not None and sample.labels.get("path") != path:
                continue
            if sample.name in request_names and "status" in sample.labels:
                requests[sample.labels["status"]] += sample.value
            elif sample.name == bucket_name and "le" in sample.labels:
                buckets[_le_key(sample.labels["le"])] += sample.value
    return Scrape(ts, dict(requests), dict(buckets))


def _le_key(label: str) -> str:
    """One spelling per bound ("0.1", "1", "1.0" and "+Inf"/"inf" differ between exporters)."""
    try:
        value = float(label)
    except ValueError:
        return label
    return "+Inf" if value == math.inf else repr(value)


def _interval(a: Scrape, b: Scrape, path: str) -> list[RequestSample]:
    """Samples for the requests counted between two readings (a restart resets the counters)."""
    reset = any(b.requests.get(k, 0.0) < v for k, v in a.requests.items()) or any(
        b.buckets.get(k, 0.0) < v for k, v in a.buckets.items())
    base = Scrape(a.ts, {}, {}) if reset else a
    outcomes: dict[Outcome, int] = defaultdict(int)
    for label, value in b.requests.items():
        status = _status_of(label)
        if status is not None:
            outcomes[(status, None)] += max(0, round(value - base.requests.get(label, 0.0)))
    total = sum(outcomes.values())
    if total == 0:
        return []
    cumulative = {bound: v - base.buckets.get(le, 0.0) for le, v in b.buckets.items()
                  if (bound := _bound(le)) is not None}
    latencies = [v * 1000.0 for v in _bucket_values(cumulative)]
    if not latencies:
        raise MetricsSourceError(
            f"{total} requests were counted but no duration histogram was found for them; "
            "set duration_metric to the name of the service's request-duration histogram")
    return _spread(a.ts, b.ts, outcomes, latencies, path)


class ScrapeSource:
    """Request samples from a Prometheus text endpoint read by backout itself (see module doc).

    Each `scrape()` is remembered (in memory, and in `state_file` when given, so that separate
    runs can compare against an earlier reading); `samples(since, until)` takes a fresh reading
    when the remembered ones do not reach `until` yet, and converts the differences between
    consecutive readings. Requests before the first reading are unknown: take one at the start
    of a window (e.g. at the switch), or use `watch(seconds)`.
    """

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, *,
                 path: str | None = None, state_file: Path | None = None,
                 requests_metric: str = "http_requests_total",
                 duration_metric: str = "http_request_duration_seconds",
                 timeout: float = 5.0, keep_seconds: float = 6 * 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.path = path
        self.state_file = state_file
        self.requests_metric = requests_metric
        self.duration_metric = duration_metric
        self.timeout = timeout
        self.keep_seconds = keep_seconds
        self.clock = clock
        self.history: list[Scrape] = self._load()

    def scrape(self) -> Scrape:
        """Read the endpoint once and remember the reading."""
        try:
            resp = httpx.get(self.url, headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise MetricsSourceError(f"could not scrape {self.url}: {exc!r}; is the service up and "
                                     "the metrics URL right?") from None
        if resp.status_code in (401, 403):
            raise MetricsSourceError(f"{self.url} refused the scrape (HTTP {resp.status_code}); check the "
                                     "key header given to the scrape source (the profile's api_key_header)")
        if resp.status_code != 200:
            raise MetricsSourceError(f"{self.url} answered HTTP {resp.status_code} to a scrape")
        try:
            reading = parse_scrape(resp.text, self.clock(), self.path, self.requests_metric,
                                   self.duration_metric)
        except ValueError as exc:
            raise MetricsSourceError(f"{self.url} did not answer in the Prometheus text format: {exc}") from None
        self.history.append(reading)
        self._prune()
        self._save()
        return reading

    def samples(self, since: float, until: float) -> list[RequestSample]:
        """Requests finished in [since, until), approximated from the readings around it."""
        called = self.clock()
        readings = self.history
        if not readings or readings[-1].ts < min(until, called):
            fresh = self.scrape()
            if until <= fresh.ts and called - until < _NOW_SLACK:
                # `until` is "now": the reading taken for it stands for it, so that the requests
                # of the last interval are not pushed past `until` by the scrape's own delay
                readings = self.history[:-1] + [Scrape(until, fresh.requests, fresh.buckets)]
        found: list[RequestSample] = []
        for a, b in itertools.pairwise(readings):
            if b.ts <= since or a.ts >= until:
                continue
            found.extend(s for s in _interval(a, b, self.path or "") if since <= s.ts < until)
        found.sort(key=lambda s: s.ts)
        return found

    def watch(self, seconds: float, sleep: Callable[[float], None] = time.sleep) -> list[RequestSample]:
        """Read now, wait `seconds`, read again: the requests in between."""
        first = self.scrape()
        sleep(seconds)
        last = self.scrape()
        return _interval(first, last, self.path or "")

    def _prune(self) -> None:
        horizon = self.history[-1].ts - self.keep_seconds
        while len(self.history) > 2 and self.history[1].ts < horizon:
            del self.history[0]

    def _identity(self) -> dict[str, Any]:
        return {"url": self.url, "path": self.path, "requests_metric": self.requests_metric,
                "duration_metric": self.duration_metric}

    def _load(self) -> list[Scrape]:
        if self.state_file is None:
            return []
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            if data.get("source") != self._identity():
                return []  # readings of another endpoint: not comparable
            return sorted((Scrape.from_dict(s) for s in data["scrapes"]), key=lambda s: s.ts)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []  # no usable state: start from a fresh reading

    def _save(self) -> None:
        if self.state_file is not None:
            atomic_write_json(self.state_file, {"source": self._identity(),
                                                "scrapes": [s.to_dict() for s in self.history]})


# -- a Prometheus server ----------------------------------------------------------------------------

Mode = Literal["cumulative", "increase"]
_MAX_POINTS = 10_000  # Prometheus refuses ranges of more than 11 000 points per series


class PrometheusSource:
    """Request samples from a Prometheus server's HTTP API, one interval per `step` seconds.

    - `total_query`: every request; series with a `status` label give the statuses, others
      count as 200.
    - `error_query`: the failed requests (they become 5xx samples: their `status` label when it
      is 5xx, else 500; a `code` label becomes the sample's code). Requests counted by both are
      counted once, as errors.
    - `latency_query`: duration histogram buckets (series with an `le` label, in seconds), or
      latency values in seconds (a `quantile` label for several quantiles); `latency_scale`
      turns its unit into milliseconds.

    mode="cumulative" (default): the queries select counters; the source subtracts consecutive
    steps per series (a drop is a restart: the new value counts from zero; a series that appears
    inside the range counts from zero). Exact at step resolution.

    mode="increase": the queries already give per-step counts (use `$window` for the step, see
    the engine profile's INCREASE_QUERIES); fractions are rounded with their remainders carried over. Approximate
    per step, since Prometheus extrapolates increase() to the window's edges.
    """

    def __init__(self, base_url: str, error_query: str, latency_query: str, total_query: str, *,
                 mode: Mode = "cumulative", step: float = 5.0, path: str = "",
                 headers: Mapping[str, str] | None = None, latency_scale: float = 1000.0,
                 timeout: float = 10.0) -> None:
        if mode not in ("cumulative", "increase"):
            raise ValueError(f"mode must be 'cumulative' or 'increase', not {mode!r}")
        if step <= 0:
            raise ValueError("step must be positive")
        self.base_url = base_url.rstrip("/")
        self.error_query, self.latency_query, self.total_query = error_query, latency_query, total_query
        self.mode: Mode = mode
        self.step = step
        self.path = path
        self.headers = dict(headers or {})
        self.latency_scale = latency_scale
        self.timeout = timeout

    def samples(self, since: float, until: float) -> list[RequestSample]:
        """Requests finished in [since, until), approximated per step (see the class doc)."""
        if until <= since:
            return []
        span_ms = round((until - since) * 1000)
        want_ms = max(round(self.step * 1000), math.ceil(span_ms / _MAX_POINTS), 1)
        steps = max(1, math.ceil(span_ms / want_ms))
        step_ms = math.ceil(span_ms / steps)
        start_ms = math.ceil(since * 1000)  # Prometheus evaluates at start + k * step, in whole ms
        times = [(start_ms + k * step_ms) / 1000 for k in range(steps + 1)]
        window = f"{step_ms}ms"
        totals = self._counts(self.total_query, times, window)
        errors = self._counts(self.error_query, times, window)
        latencies = self._latencies(times, window)
        pooled = sorted(v for values in latencies.values() for v in values)
        found: list[RequestSample] = []
        for k in range(1, len(times)):
            outcomes = self._outcomes(totals.get(k, {}), errors.get(k, {}))
            n = sum(outcomes.values())
            if n == 0:
                continue
            step_latencies = latencies.get(k) or pooled
            if not step_latencies:
                raise MetricsSourceError(
                    f"Prometheus at {self.base_url} counted {n} requests but the latency query returned "
                    f"nothing for them: check latency_query ({self.latency_query})")
            found.extend(s for s in _spread(times[k - 1], min(times[k], until), outcomes, step_latencies,
                                            self.path) if since <= s.ts < until)
        found.sort(key=lambda s: s.ts)
        return found

    # -- the three queries ---------------------------------------------------------------------

    def _query(self, query: str, times: list[float], window: str) -> list[dict[str, Any]]:
        """The matrix of query_range over `times` (one point per step)."""
        params = {"query": query.replace("$window", window), "start": f"{times[0]:.3f}",
                  "end": f"{times[-1]:.3f}", "step": f"{(times[1] - times[0]):.3f}"}
        url = f"{self.base_url}/api/v1/query_range"
        try:
            resp = httpx.post(url, data=params, headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise MetricsSourceError(f"could not reach Prometheus at {self.base_url}: {exc!r}") from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or body.get("status") != "success":
            detail = body.get("error") or resp.text[:200]
            raise MetricsSourceError(f"Prometheus at {self.base_url} refused the query {params['query']!r} "
                                     f"(HTTP {resp.status_code}): {detail}")
        data = body.get("data", {})
        if data.get("resultType") != "matrix":
            raise MetricsSourceError(f"Prometheus answered a {data.get('resultType')} to a range query")
        result: list[dict[str, Any]] = data.get("result", [])
        return result

    def _per_step(self, series: Mapping[str, Any], times: list[float]) -> dict[int, float]:
        """Step index -> this series' count in that step (differences, or the values as given)."""
        index = {round(t * 1000): k for k, t in enumerate(times)}
        points = []
        for ts, raw in series.get("values", []):
            value = _number(raw)
            k = index.get(round(float(ts) * 1000))
            if value is not None and k is not None:
                points.append((k, value))
        out: dict[int, float] = {}
        if self.mode == "increase":
            for k, value in points:
                if k > 0:
                    out[k] = max(0.0, value)
            return out
        previous: float | None = None
        for k, value in points:
            if previous is None:
                if k > 0:  # the series appeared inside the range: it counted from zero
                    out[k] = value
            else:
                out[k] = value - previous if value >= previous else value
            previous = value
        return out

    def _counts(self, query: str, times: list[float], window: str) -> dict[int, dict[tuple[str, str], int]]:
        """Step index -> (status label, code label) -> whole requests, remainders carried over."""
        exact: dict[int, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
        for series in self._query(query, times, window):
            labels = series.get("metric", {})
            key = (str(labels.get("status", "")), str(labels.get("code", "")))
            for k, value in self._per_step(series, times).items():
                exact[k][key] += value
        rounded: dict[int, dict[tuple[str, str], int]] = defaultdict(dict)
        carried: dict[tuple[str, str], float] = defaultdict(float)
        for k in sorted(exact):
            for key, value in exact[k].items():
                before = round(carried[key])
                carried[key] += value
                if round(carried[key]) > before:
                    rounded[k][key] = round(carried[key]) - before
        return rounded

    def _outcomes(self, totals: Mapping[tuple[str, str], int],
                  errors: Mapping[tuple[str, str], int]) -> dict[Outcome, int]:
        outcomes: dict[Outcome, int] = defaultdict(int)
        for (label, code), n in errors.items():
            status = _status_of(label)
            outcomes[(status if status is not None and status >= 500 else 500, code or None)] += n
        error_count = sum(errors.values())
        fine: dict[int, int] = defaultdict(int)
        for (label, _code), n in totals.items():
            status = _status_of(label) if label else 200
            if status is not None and status < 500:
                fine[status] += n
            elif status is None:
                fine[200] += n
        ok_count = max(0, sum(totals.values()) - error_count)
        labelled = sum(fine.values())
        if labelled != ok_count:  # errors also counted among non-5xx totals, or totals unlabelled
            fine = _scaled(fine, ok_count) if labelled else defaultdict(int, {200: ok_count})
        for status, n in fine.items():
            outcomes[(status, None)] += n
        return dict(outcomes)

    def _latencies(self, times: list[float], window: str) -> dict[int, list[float]]:
        """Step index -> latencies in ms of that step's requests (from buckets or quantiles)."""
        series_list = self._query(self.latency_query, times, window)
        if any("le" in s.get("metric", {}) for s in series_list):
            buckets: dict[int, dict[float, float]] = defaultdict(lambda: defaultdict(float))
            for series in series_list:
                le = _bound(series.get("metric", {}).get("le"))
                if le is None:
                    continue
                for k, value in self._per_step(series, times).items():
                    buckets[k][le] += value
            return {k: [v * self.latency_scale for v in _bucket_values(cum)] for k, cum in buckets.items()}
        quantiles: dict[int, dict[float, float]] = defaultdict(dict)
        index = {round(t * 1000): k for k, t in enumerate(times)}
        for series in series_list:
            q = _number(series.get("metric", {}).get("quantile", "0.5"))
            for ts, raw in series.get("values", []):
                latency, step = _number(raw), index.get(round(float(ts) * 1000))
                if latency is not None and step is not None and step > 0 and q is not None:
                    quantiles[step][q] = latency * self.latency_scale
        return {k: _quantile_values(points, 100) for k, points in quantiles.items() if points}


def _bound(label: Any) -> float | None:
    """A histogram bucket's `le` label as a number ("+Inf" included), or None."""
    try:
        return float(label)
    except (TypeError, ValueError):
        return None


def _scaled(counts: Mapping[int, int], total: int) -> dict[int, int]:
    """Counts scaled to sum to `total` (largest remainders)."""
    whole = sum(counts.values())
    shares = {k: v * total / whole for k, v in counts.items()}
    out = {k: math.floor(v) for k, v in shares.items()}
    for k in sorted(shares, key=lambda k: shares[k] - out[k], reverse=True)[: total - sum(out.values())]:
        out[k] += 1
    return defaultdict(int, out)
