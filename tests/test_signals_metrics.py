"""Request samples from the real Engine: its JSON logs, its /metrics scraped by backout, and a
real Prometheus server (Debian's /usr/bin/prometheus) scraping it with a bearer token."""

from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import httpx
import pytest

from backout.profiles.engine import INCREASE_QUERIES
from backout.profiles.engine import PROFILE as ENGINE
from backout.signals.metrics import (
    LogSource,
    MetricsSourceError,
    PrometheusSource,
    ScrapeSource,
    lines_from_file,
    parse_request_line,
)
from backout.signals.model import RequestSample
from conftest import StartEngine
from engine.traffic import TrafficPlan, TrafficSummary, run_traffic
from engine_proc import EngineProcess, free_port

PROMETHEUS = Path("/usr/bin/prometheus")
# The engine profile's metric names and queries (a source's defaults are generic ones).
_ENGINE_SCRAPE = {"path": ENGINE.request_path, "requests_metric": ENGINE.prometheus.requests_metric,
                  "duration_metric": ENGINE.prometheus.duration_metric}
_ENGINE_QUERIES = (str(ENGINE.prometheus.errors), str(ENGINE.prometheus.latency), str(ENGINE.prometheus.total))
T = TypeVar("T")


@pytest.fixture(scope="module")
def engine(start_engine: StartEngine) -> EngineProcess:
    """The errors-broken build: about 30% of turns fail with 500."""
    return start_engine("2.4.0-errors")


def send(eng: EngineProcess, turns: float = 60, rate: float = 40.0, seed: int = 0) -> TrafficSummary:
    """Send `turns` turns at `rate` per second; every one must get an answer."""
    summary = run_traffic(TrafficPlan(eng.url, eng.key or "", rate=rate, duration=turns / rate, seed=seed))
    assert summary.sent == summary.attempted, summary.render()
    assert summary.by_status.get(500, 0) > 0 and summary.by_status.get(200, 0) > 0, summary.render()
    return summary


def eventually(get: Callable[[], T], done: Callable[[T], bool], timeout: float = 5.0) -> T:
    """Call `get` until `done` holds (the Engine logs and counts a request just after answering)."""
    deadline = time.monotonic() + timeout
    value = get()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = get()
    return value


def errors(samples: list[RequestSample]) -> int:
    return sum(1 for s in samples if s.error)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# -- logs -------------------------------------------------------------------------------------------

def test_log_source_counts_requests_errors_and_latency(engine: EngineProcess) -> None:
    since = time.time()
    summary = send(engine, turns=60, seed=1)
    source = LogSource(lines_from_file(engine.log_path), counts=ENGINE.counts)
    samples = eventually(lambda: source.samples(since, time.time()), lambda s: len(s) >= summary.sent)

    assert len(samples) == summary.sent
    assert errors(samples) == summary.by_status[500]
    assert all(s.path == "/execute" for s in samples)  # /health and /feedback lines filtered out
    assert [s.ts for s in samples] == sorted(s.ts for s in samples)
    assert all(since <= s.ts <= time.time() for s in samples)
    assert {s.code for s in samples if s.error} == {"INTERNAL_ERROR"}
    assert all(s.task_id and s.task_id.startswith("traffic-1-") for s in samples)
    ok = [s.duration_ms for s in samples if not s.error]
    # a turn of the 2.4.0 builds simulates 50 ms x 1.4 of model time
    assert 60 <= min(ok) and max(ok) < 2000
    assert percentile(ok, 50) == pytest.approx(summary.latency_p50_ms, rel=0.5)
    assert all(s.duration_ms < 60 for s in samples if s.error)  # refused before the turn runs

    # a range before the traffic holds none of it; other paths on request
    assert source.samples(since - 60, since) == []
    everything = LogSource(lines_from_file(engine.log_path)).samples(since, time.time())
    assert {"/execute", "/feedback"} <= {s.path for s in everything}


def test_log_source_reads_other_services_lines_and_skips_the_rest() -> None:
    lines = [
        "--- start serve --port 1",
        "plain text, not JSON",
        '{"ts": "2026-01-02T03:04:05.250+00:00", "level": "INFO", "message": "engine ready"}',
        ('{"timestamp": "2026-01-02T03:04:06Z", "status_code": 503, "latency_ms": 12.5, '
         '"url": "http://svc/execute?x=1", "error": {"code": "DRAINING"}}'),
        '{"time": 1767323047.5, "status": "200", "duration": 0.25, "route": "/execute", "taskId": "t9"}',
        'web-1  | {"time": 1767323048000, "http": {"status_code": 201, "path": "/execute"}, "elapsed": "80ms"}',
        ('{"time": "2026-01-02T03:04:09", "request": "POST /execute HTTP/1.1", "status": 502, '
         '"duration_ms": 7}'),
        '{"time": "2026-01-02T03:04:10Z", "status": "ok", "duration": 1}',  # no HTTP status
        '{"time": "2026-01-02T03:04:11Z", "status": 200}',  # no duration: not a request line
    ]
    parsed = [parse_request_line(line) for line in lines]
    assert parsed[:3] == [None, None, None] and parsed[-2:] == [None, None]
    drained, fine, created, gateway = parsed[3:7]
    assert drained == RequestSample(1767323046.0, 503, 12.5, None, "/execute", "DRAINING")
    assert fine == RequestSample(1767323047.5, 200, 250.0, "t9", "/execute", None)
    assert created == RequestSample(1767323048.0, 201, 80.0, None, "/execute", None)
    assert gateway is not None and (gateway.status, gateway.duration_ms, gateway.path) == (502, 7.0, "/execute")
    assert gateway.ts == 1767323049.0  # a time without a zone is UTC

    source = LogSource(lambda since: lines)
    window = source.samples(1767323046.0, 1767323049.0)  # [since, until)
    assert [s.status for s in window] == [503, 200, 201]


# -- /metrics, scraped by backout --------------------------------------------------------------------

def test_metrics_endpoint_accepts_the_key_as_bearer_token(engine: EngineProcess) -> None:
    url = engine.url + "/metrics"
    assert httpx.get(url, headers={"Authorization": f"Bearer {engine.key}"}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"bearer  {engine.key}"}).status_code == 200
    assert httpx.get(url, headers=engine.headers).status_code == 200
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {engine.key}"},
                    {"Authorization": "Bearer"}, {}):
        resp = httpx.get(url, headers=headers)
        assert resp.status_code == 401, headers
        assert resp.json()["error"]["code"] == "INVALID_KEY"


def test_scrape_source_deltas_match_the_turns_sent(engine: EngineProcess, tmp_path: Path) -> None:
    state = tmp_path / "scrapes.json"
    source = ScrapeSource(engine.url + "/metrics", engine.headers, state_file=state, **_ENGINE_SCRAPE)
    first = source.scrape()
    summary = send(engine, turns=50, seed=2)
    samples = eventually(lambda: source.samples(first.ts, time.time()),
                         lambda s: len(s) >= summary.sent)

    assert len(samples) == summary.sent
    assert errors(samples) == summary.by_status[500]
    assert all(first.ts <= s.ts <= time.time() for s in samples)
    # 70 ms turns land in the (50 ms, 100 ms] bucket; interpolation keeps them inside it
    ok = [s.duration_ms for s in samples if not s.error]
    assert 50 <= percentile(ok, 50) <= 100 and max(ok) <= 12_800
    assert state.stat().st_mode & 0o777 == 0o600

    # another run reads the remembered scrapes from the state file and sees only new requests
    later = ScrapeSource(engine.url + "/metrics", engine.headers, state_file=state, **_ENGINE_SCRAPE)
    assert len(later.history) == len(source.history) >= 2
    mark = later.history[-1].ts  # a window that starts at a reading is exact
    second = send(engine, turns=20, seed=3)
    time.sleep(0.1)
    fresh = later.samples(mark, time.time())
    assert len(fresh) == second.sent and errors(fresh) == second.by_status[500]

    # watch(): a scrape, the pause (here: traffic), another scrape
    def traffic_instead_of_sleep(seconds: float) -> None:
        send(engine, turns=20, seed=4)
        time.sleep(0.2)

    watched = later.watch(1.0, sleep=traffic_instead_of_sleep)
    assert len(watched) == 20


def test_scrape_source_without_the_key_says_so(engine: EngineProcess) -> None:
    with pytest.raises(MetricsSourceError, match="refused the scrape .*401"):
        ScrapeSource(engine.url + "/metrics").scrape()
    with pytest.raises(MetricsSourceError, match="could not scrape"):
        ScrapeSource(f"http://127.0.0.1:{free_port()}/metrics", engine.headers).scrape()


# -- a real Prometheus server -------------------------------------------------------------------------

@pytest.fixture
def prometheus(engine: EngineProcess, tmp_path: Path) -> Iterator[str]:
    """Prometheus on a free port scraping the Engine every second with a bearer token; its URL."""
    if not PROMETHEUS.exists():
        message = f"{PROMETHEUS} is missing (apt-get install prometheus; scripts/install-system-packages.sh)"
        if os.environ.get("BACKOUT_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    key_file = tmp_path / "engine.key"
    key_file.write_text(engine.key or "")
    key_file.chmod(0o600)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: engine
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {key_file}
    static_configs:
      - targets: ["127.0.0.1:{engine.port}"]
""")
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        # ready, and the Engine scraped successfully (the bearer token was accepted) at least once
        up = eventually(lambda: _instant(url, 'up{job="engine"}'), lambda v: v == 1.0, timeout=20)
        assert up == 1.0, f"Prometheus never scraped the Engine (up={up}):\n{log.read_text()[-3000:]}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _instant(url: str, query: str) -> float | None:
    """The single value of an instant query, or None (not ready, no series)."""
    try:
        resp = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=2)
        result = resp.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return None


def _scraped_after(url: str, moment: float, timeout: float = 5.0) -> None:
    """Wait until Prometheus has a scrape of the Engine that started after `moment`."""
    last = eventually(lambda: _instant(url, 'timestamp(up{job="engine"})'),
                      lambda v: v is not None and v > moment, timeout=timeout)
    assert last is not None and last > moment, f"no scrape after {moment} (last {last})"


def test_prometheus_source_counts_match_the_traffic(engine: EngineProcess, prometheus: str) -> None:
    time.sleep(0.2)
    since = time.time()
    summary = send(engine, turns=60, seed=5)
    _scraped_after(prometheus, time.time() + 0.1)
    until = time.time()

    samples = PrometheusSource(prometheus, *_ENGINE_QUERIES, path=ENGINE.request_path or "", step=2.0).samples(since, until)
    assert len(samples) == summary.sent
    assert errors(samples) == summary.by_status[500]
    assert {s.status for s in samples} == {200, 500}
    assert all(since <= s.ts < until for s in samples)
    ok = [s.duration_ms for s in samples if not s.error]
    assert 50 <= percentile(ok, 50) <= 100 and max(ok) <= 12_800
    # a range before the traffic is empty
    assert PrometheusSource(prometheus, *_ENGINE_QUERIES).samples(since - 3, since - 0.5) == []

    # per-step increase() instead (approximate: Prometheus extrapolates to the window's edges and
    # misses what falls between two windows), here one window around a second burst, with latency
    # from two quantiles instead of buckets
    mark = time.time()
    again = send(engine, turns=60, seed=6)
    time.sleep(1.0)
    _scraped_after(prometheus, time.time())
    rate = 'sum by (le) (rate(engine_request_duration_seconds_bucket{path="/execute"}[$window]))'
    quantiles = " or ".join(
        f'label_replace(histogram_quantile({q}, {rate}), "quantile", "{q}", "", "")' for q in ("0.5", "0.95"))
    approx = PrometheusSource(prometheus, INCREASE_QUERIES["error_query"], quantiles,
                              INCREASE_QUERIES["total_query"], mode="increase", step=60)
    wide = approx.samples(mark - 1.0, time.time())
    assert 0.8 * again.sent <= len(wide) <= 1.5 * again.sent
    assert errors(wide) / len(wide) == pytest.approx(again.by_status[500] / again.sent, abs=0.08)
    durations = [s.duration_ms for s in wide]
    assert 50 <= percentile(durations, 50) <= 100 and max(durations) <= 12_800, sorted(set(durations))

    bad = PrometheusSource(prometheus, *_ENGINE_QUERIES[:2], total_query="sum(")
    with pytest.raises(MetricsSourceError, match="refused the query"):
        bad.samples(since, until)
