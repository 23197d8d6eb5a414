"""The drill report: files, history, the self-contained HTML page, and how it looks in a browser."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from browser import artifacts_dir, chromium_path, run_browser
from markupsafe import escape

from backout.report import (
    drill_paths,
    history_rows,
    load_history,
    render_html,
    render_terminal,
    slowest_phases,
    write_report,
)

REPO = Path(__file__).resolve().parent.parent
IDS = ("timeline", "errors-chart", "latency-chart", "checks", "rows", "trend-chart")
SVG_IDS = ("timeline", "errors-chart", "latency-chart", "trend-chart")

# (name, seconds, detail) of a brain-layer rollback drill, in order
PHASES = [
    ("bring-up", 3.4, "engine 2.3.1 on 127.0.0.1:18080 (process runtime)"),
    ("seed", 2.1, "12 000 episodes, 3 400 knowledge rows"),
    ("baseline", 10.0, "10 s of traffic at 20 req/s: 0.0% errors, p95 41 ms"),
    ("snapshot", 1.6, "snapshot s-20261127T014512Z verified (38.2 MB)"),
    ("upgrade", 4.2, "2.4.0-errors up; migrations 0012..0014 applied"),
    ("detect", 9.8, "roll-back: errors 31.0% vs 0.0% (p < 0.001)"),
    ("decide", 0.2, "brain layer: 2.3.1 cannot read schema 0014"),
    ("drain", 1.1, "3 in-flight requests finished"),
    ("restore", 2.6, "brain restored from s-20261127T014512Z; bad brain quarantined"),
    ("start", 2.3, "2.3.1 healthy after 2.3 s"),
    ("verify", 3.0, "smoke, schema stamp, row counts"),
    ("notify", 0.3, "file notifier: incidents/20261127T014500Z/messages.jsonl"),
]
T0 = datetime(2026, 11, 27, 1, 45, tzinfo=UTC).timestamp()


def make_result(drill_id: str = "20261127T014500Z", scale: float = 1.0, passed: bool = True,
                break_mode: str = "errors") -> dict[str, Any]:
    """A realistic drill result; `scale` stretches every phase (for earlier, slower drills)."""
    phases, t = [], T0
    for name, seconds, detail in PHASES:
        phases.append({"name": name, "start": round(t, 3), "seconds": round(seconds * scale, 2),
                       "detail": detail})
        t += seconds * scale
    by = {p["name"]: p for p in phases}
    switch = by["upgrade"]["start"] + by["upgrade"]["seconds"]
    detect = by["detect"]["start"] + by["detect"]["seconds"]
    recovered = by["start"]["start"] + by["start"]["seconds"]
    recovery = round(recovered - switch, 1)
    return {
        "format": "backout-drill/1", "id": drill_id,
        "started_at": datetime.fromtimestamp(T0, UTC).isoformat(),
        "finished_at": datetime.fromtimestamp(t, UTC).isoformat(),
        "deployment": "engine", "runtime": "process", "self_contained": True,
        "break": break_mode, "production_version": "2.3.1", "broken_version": "2.4.0-errors",
        "passed": passed,
        "summary": (f"GREEN: rolled back 2.4.0-errors -> 2.3.1 (brain layer) {recovery} s after "
                    "the switch; nothing lost"),
        "phases": phases,
        "marks": {"switch": switch, "detect": detect, "recovered": recovered},
        "trigger": ["errors"], "layer": "brain",
        "layer_reason": "2.3.1 cannot read a brain at migration 0014 (forward-only migrations)",
        "checks": [
            {"name": "rolled back to 2.3.1", "passed": True, "detail": "/health reports 2.3.1"},
            {"name": "schema stamp matches the snapshot", "passed": True, "detail": "head 0011"},
            {"name": "recovery within RTO", "passed": True, "detail": f"{recovery} s <= 120 s"},
            {"name": "no rows lost", "passed": True, "detail": "all 57 bad-window rows salvaged"},
            {"name": "smoke /execute", "passed": True, "detail": "200 in 38 ms"},
        ],
        "targets": {"rto_s": 120.0, "rpo_rows": 0, "recovery_s": recovery, "data_loss_rows": 0},
        "tables": [
            {"table": "episodes", "before": 12000, "bad_window": 41, "salvaged": 41, "lost": 0},
            {"table": "conversations", "before": 2210, "bad_window": 12, "salvaged": 12, "lost": 0},
            {"table": "feedback", "before": 530, "bad_window": 4, "salvaged": 4, "lost": 0},
            {"table": "knowledge", "before": 3400, "bad_window": 0, "salvaged": 0, "lost": 0},
        ],
        "traffic": _traffic(T0, t, switch, detect, recovered),
        "slowest": None,
        "incident": ".backout/incidents/20261127T014500Z",
        "failure": None,
    }


def _traffic(start: float, end: float, switch: float, detect: float,
             recovered: float) -> dict[str, Any]:
    rnd = random.Random(7)
    series, total, errors = [], 0, 0
    for t in range(int(start), int(end) + 1):
        broken = switch <= t < detect + 1
        down = detect + 1 <= t < recovered
        requests = 0 if down else 20 + rnd.randint(-2, 2)
        err = round(requests * (0.3 + rnd.random() * 0.05)) if broken else 0
        p95 = None if not requests else round((180 if broken else 40) + rnd.random() * 15, 1)
        series.append({"t": t, "requests": requests, "errors": err, "p95_ms": p95})
        total, errors = total + requests, errors + err
    return {"total": total, "errors": errors, "series": series}


@pytest.fixture
def result() -> dict[str, Any]:
    return make_result()


@pytest.fixture
def history() -> list[dict[str, Any]]:
    """Three earlier drills: errors (failed, slowest), latency (faster), errors (slower)."""
    older = make_result("20261101T090000Z", scale=1.6, passed=False)
    older["started_at"] = "2026-11-01T09:00:00+00:00"
    older["targets"]["recovery_s"] = None
    older["failure"] = {"where": "restore", "why": "snapshot failed verification", "next": []}
    latency = make_result("20261110T090000Z", scale=0.9, break_mode="latency")
    latency["started_at"] = "2026-11-10T09:00:00+00:00"
    previous = make_result("20261120T090000Z", scale=1.3)
    previous["started_at"] = "2026-11-20T09:00:00+00:00"
    return [older, latency, previous]


# -- files and history ---------------------------------------------------------------------------


def test_paths_and_bad_ids(tmp_path: Path) -> None:
    assert drill_paths(tmp_path, "20261127T014500Z") == (
        tmp_path / "drill-20261127T014500Z.json", tmp_path / "drill-20261127T014500Z.html")
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            drill_paths(tmp_path, bad)


def test_write_report_files_modes_and_round_trip(tmp_path: Path, result: dict[str, Any],
                                                 history: list[dict[str, Any]]) -> None:
    drills = tmp_path / "state" / "drills"
    json_path, html_path = write_report(drills, result, history)
    assert (json_path, html_path) == drill_paths(drills, result["id"])
    assert drills.stat().st_mode & 0o777 == 0o700
    assert json_path.stat().st_mode & 0o777 == 0o600
    assert html_path.stat().st_mode & 0o777 == 0o600
    assert json.loads(json_path.read_text()) == result
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in drills.iterdir()) == sorted([json_path.name, html_path.name])


def test_load_history_sorts_and_skips_unreadable(tmp_path: Path,
                                                 history: list[dict[str, Any]]) -> None:
    for drill in reversed(history):
        write_report(tmp_path, drill, [])
    (tmp_path / "drill-broken.json").write_text("{not json")
    (tmp_path / "drill-list.json").write_text("[1, 2]")
    (tmp_path / "drill-other.json").write_text('{"format": "something-else"}')
    loaded = load_history(tmp_path)
    assert [d["id"] for d in loaded] == [d["id"] for d in history]
    assert loaded[0]["_path"] == str(tmp_path / "drill-20261101T090000Z.json")
    assert load_history(tmp_path / "missing") == []


def test_loaded_history_is_written_back_without_its_path(tmp_path: Path,
                                                         history: list[dict[str, Any]]) -> None:
    write_report(tmp_path, history[0], [])
    loaded = load_history(tmp_path)[0]
    json_path, _ = write_report(tmp_path, loaded, [])
    assert "_path" not in json.loads(json_path.read_text())


def test_slowest_phases_against_previous_drill_of_same_break(
        result: dict[str, Any], history: list[dict[str, Any]]) -> None:
    slow = slowest_phases(result, history)
    assert [s["name"] for s in slow] == ["baseline", "detect", "upgrade"]
    # the previous errors drill is 20261120 (scale 1.3), not the later-listed latency one
    assert slow[0] == {"name": "baseline", "seconds": 10.0, "previous_s": 13.0}
    assert slow[1]["previous_s"] == pytest.approx(9.8 * 1.3, abs=0.01)
    assert [s["previous_s"] for s in slowest_phases(result, [])] == [None, None, None]
    latency = make_result("20261128T000000Z", break_mode="latency")
    latency["started_at"] = "2026-11-28T00:00:00+00:00"
    assert slowest_phases(latency, history, n=1)[0]["previous_s"] == pytest.approx(9.0)


def test_history_rows(tmp_path: Path, history: list[dict[str, Any]]) -> None:
    for drill in history:
        write_report(tmp_path, drill, [])
    rows = history_rows(load_history(tmp_path))
    assert [r["id"] for r in rows] == [d["id"] for d in history]
    first = rows[0]
    assert first["passed"] is False and first["recovery_s"] is None
    assert first["break"] == "errors" and first["layer"] == "brain"
    assert first["when"] == "2026-11-01T09:00:00+00:00"
    assert first["detect_s"] == pytest.approx(9.8 * 1.6, abs=0.01)
    assert first["report"] == str(tmp_path / "drill-20261101T090000Z.html")
    assert rows[2]["recovery_s"] == history[2]["targets"]["recovery_s"]
    assert set(first) == {"id", "when", "break", "passed", "recovery_s", "detect_s", "layer",
                          "report"}


# -- the page ------------------------------------------------------------------------------------


def test_html_is_self_contained_with_every_section(result: dict[str, Any],
                                                    history: list[dict[str, Any]]) -> None:
    page = render_html(result, history)
    assert "http://" not in page and "https://" not in page
    for loader in ("<script", "<link", "@import", "url(", "<img", "<iframe"):
        assert loader not in page.lower()
    for element_id in IDS:
        assert f'id="{element_id}"' in page
    assert "PASSED" in page and str(escape(result["summary"])) in page
    for label in ("switch", "detected", "recovered"):
        assert f">{label}</text>" in page
    assert "episodes" in page and "first drill" not in page


def test_html_escapes_text(result: dict[str, Any]) -> None:
    result["phases"][5]["detail"] = "<script>alert('x')</script>"
    result["checks"][0]["detail"] = '"><img src=x onerror=alert(1)>'
    result["summary"] = "a & b <b>bold</b>"
    page = render_html(result, [])
    assert "<script" not in page and "<img" not in page and "<b>bold" not in page
    assert "&lt;script&gt;" in page and "a &amp; b &lt;b&gt;bold&lt;/b&gt;" in page


def test_failed_drill_shows_failure_box_and_first_drill(result: dict[str, Any]) -> None:
    result.update(passed=False, summary="RED: detection took too long",
                  failure={"where": "detect", "why": "no verdict within 60 s",
                           "next": ["Lower check_every", "Re-run `backout drill --break errors`"]})
    result["targets"]["recovery_s"] = None
    result["checks"][2]["passed"] = False
    page = render_html(result, [])
    assert 'id="failure"' in page and "FAILED" in page and "no verdict within 60 s" in page
    assert "Lower check_every" in page and "first drill" in page
    assert 'class="bar g-failed"' in page  # the phase named in failure.where is drawn red


def test_html_survives_a_drill_that_stopped_early() -> None:
    partial = {"format": "backout-drill/1", "id": "20261127T020000Z", "passed": False,
               "break": "crash", "phases": [{"name": "bring-up", "start": T0, "seconds": 1.0,
                                             "detail": "engine did not start"}],
               "marks": {"switch": None, "detect": None, "recovered": None},
               "failure": {"where": "bring-up", "why": "port in use", "next": ["free the port"]}}
    page = render_html(partial, [])
    for element_id in IDS:
        assert f'id="{element_id}"' in page
    assert "no traffic recorded" in page
    assert render_terminal(partial)[-1].startswith("FAIL")
    assert render_terminal({})[-1] == "FAIL  drill failed"


# -- the terminal --------------------------------------------------------------------------------


def test_render_terminal(result: dict[str, Any], history: list[dict[str, Any]]) -> None:
    result["slowest"] = slowest_phases(result, history)
    result["checks"][4] = {"name": "smoke /execute", "passed": False, "detail": "500"}
    lines = render_terminal(result)
    text = "\n".join(lines)
    assert "\x1b" not in text
    assert lines[0] == "phases"
    assert re.search(r"^  restore +2\.6 s +brain restored", text, re.M)
    assert re.search(r"^  total +40\.6 s$", text, re.M)
    assert re.search(r"^  PASS +rolled back to 2\.3\.1 +/health reports 2\.3\.1$", text, re.M)
    assert re.search(r"^  FAIL +smoke /execute +500$", text, re.M)
    assert re.search(r"^  baseline +10\.0 s +previous 13\.0 s, -3\.0 s \(-23%\)$", text, re.M)
    assert "recovery 16.0 s (RTO 120.0 s)" in text
    assert lines[-1] == "PASS  " + result["summary"]


# -- a real browser ------------------------------------------------------------------------------


@pytest.mark.browser
def test_page_renders_in_headless_chromium(tmp_path: Path, result: dict[str, Any],
                                           history: list[dict[str, Any]]) -> None:
    chromium = chromium_path()
    _, html_path = write_report(tmp_path / "drills", result, history)
    url = html_path.resolve().as_uri()
    dom = run_browser(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for element_id in SVG_IDS:
        assert re.search(rf'<svg[^>]*\bid="{element_id}"', dom.stdout), element_id
    for element_id in ("checks", "rows"):
        assert f'id="{element_id}"' in dom.stdout
    png = artifacts_dir() / "drill-report.png"
    png.unlink(missing_ok=True)
    shot = run_browser(chromium, tmp_path / "profile-shot", f"--screenshot={png}", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.exists() and png.stat().st_size > 20_000, shot.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
