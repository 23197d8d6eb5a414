"""What a person sees of a real drill: `backout drill`'s summary on a terminal, and its report in Chromium.

Two real drills are recorded in tests/recordings/drill/ (the JSON report `backout drill` wrote, default
errors break, self-contained, green):
  errors-20261205T101403Z.json  an older drill: one-second buckets at whole seconds, no switch-overs, phase
                                details with paths into its removed temporary folder
  errors-20261205T102109Z.json  a drill as the drill records them now: buckets cut at the marks, the
                                switch-overs, the verdict's evidence per signal
tests/drill_replay.py runs the real `backout drill` command with the rehearsal replaced by a recording, in a
pseudo-terminal; the screen is read as a terminal shows it. The page it writes is rendered in headless
Chromium with a measuring script added to a copy of it (the report itself has no script): the positions of
the marks, the switch-overs, the bars and the points of the drawn lines come from the browser's layout.
"""

from __future__ import annotations

import copy
import fcntl
import html
import json
import os
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from browser import chromium_path, run_browser

from backout.report import render_html, render_terminal

HERE = Path(__file__).resolve().parent
RECORDINGS = HERE / "recordings" / "drill"
NOW = RECORDINGS / "errors-20261205T102109Z.json"
OLDER = RECORDINGS / "errors-20261205T101403Z.json"
COLS, ROWS = 100, 200
PHASES = ["bring-up", "seed", "baseline", "pre-flight", "snapshot", "upgrade", "detect", "decide", "drain",
          "restore", "start", "salvage", "verify", "notify", "checks"]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# -- a terminal ----------------------------------------------------------------------------------


def _in_pty(argv: list[str], cwd: Path, timeout: float = 60) -> str:
    """Run `argv` with stdin, stdout and stderr on a pseudo-terminal of COLS x ROWS; all it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_") and k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    child = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                             start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        child.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def _screen(raw: str, cols: int = COLS) -> list[str]:
    """The lines a terminal shows for `raw`: carriage return, newline, erase to the end of the line, automatic
    wrap at `cols`; colours and other escape sequences take no room."""
    lines: list[list[str]] = [[]]
    col, i = 0, 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            m = re.match(r"\x1b\[[0-9;?]*([A-Za-z])", raw[i:])
            if m:
                if m.group(1) == "K":
                    del lines[-1][col:]
                i += m.end()
                continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        elif ch >= " ":
            if col >= cols:
                lines.append([])
                col = 0
            row = lines[-1]
            row.extend(" " * (col - len(row)))
            if col < len(row):
                row[col] = ch
            else:
                row.append(ch)
            col += 1
        i += 1
    return ["".join(r).rstrip() for r in lines]


def _run_drill_on_a_terminal(recording: Path, folder: Path, history: list[dict[str, Any]] = ()) -> list[str]:
    """`backout drill` on a terminal, replaying `recording`, in `folder` (with `history` in .backout/drills)."""
    drills = folder / ".backout" / "drills"
    drills.mkdir(parents=True, exist_ok=True)
    for earlier in history:
        (drills / f"drill-{earlier['id']}.json").write_text(json.dumps(earlier), encoding="utf-8")
    raw = _in_pty([sys.executable, str(HERE / "drill_replay.py"), str(recording)], folder)
    return _screen(raw)


def _previous(result: dict[str, Any]) -> dict[str, Any]:
    """The same drill a day earlier, every phase 1% slower (and baseline 3.0 s slower)."""
    earlier = copy.deepcopy(result)
    earlier["id"] = "20261204T102109Z"
    earlier["started_at"] = "2026-12-04T10:21:09+00:00"
    for p in earlier["phases"]:
        p["seconds"] = round(p["seconds"] * 1.01, 3) + (3.0 if p["name"] == "baseline" else 0.0)
    return earlier


@pytest.fixture(scope="module")
def now_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The recorded drill through `backout drill` on a terminal, with the previous drill in the history."""
    folder = tmp_path_factory.mktemp("drill-now")
    result = _load(NOW)
    screen = _run_drill_on_a_terminal(NOW, folder, [_previous(result)])
    drills = folder / ".backout" / "drills"
    return {"screen": screen, "result": result, "html": drills / f"drill-{result['id']}.html",
            "json": drills / f"drill-{result['id']}.json", "folder": folder}


@pytest.fixture(scope="module")
def older_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("drill-older")
    result = _load(OLDER)
    return {"screen": _run_drill_on_a_terminal(OLDER, folder), "result": result, "folder": folder}


def _phase_block(screen: list[str]) -> list[str]:
    start = screen.index("phases")
    end = next(i for i in range(start, len(screen)) if screen[i].startswith("  total"))
    return screen[start + 1:end]


def _joined_details(block: list[str]) -> dict[str, str]:
    """Each phase's detail as printed: its first line and the continuation lines under it, joined."""
    details: dict[str, str] = {}
    name = None
    for line in block:
        m = re.match(r"^  (\S+) +(?:<1 ms|\d+ ms|\d+\.\d s)(?:  (.*))?$", line)
        if m:
            name = m.group(1)
            details[name] = m.group(2) or ""
        else:
            assert name is not None and line.startswith(" " * 10), line
            details[name] += " " + line.strip()
    return details


def test_terminal_lists_each_phase_once(now_run: dict[str, Any]) -> None:
    screen = now_run["screen"]
    listed = screen[:screen.index("checks")]  # the live status and the phase list (the slowest come later)
    for name in PHASES:
        shown = [line for line in listed if re.match(rf"^\s+(?:… )?{re.escape(name)}\b", line)]
        assert len(shown) == 1, (name, shown)
    assert [re.match(r"^  (\S+)", line).group(1) for line in _phase_block(screen)
            if re.match(r"^  \S", line)] == PHASES


@pytest.mark.parametrize("which", ["now_run", "older_run"])
def test_terminal_details_are_whole_and_name_no_path_in_the_removed_folder(which: str,
                                                                          request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(which)
    screen, result = run["screen"], run["result"]
    folder = result["staging_folder"]
    assert not Path(folder).exists()
    assert not any(folder in line or "/tmp/backout-drill-" in line for line in screen), folder
    assert not any(line.endswith("...") for line in screen)
    assert all(len(line) <= COLS for line in screen)
    details = _joined_details(_phase_block(screen))
    for p in result["phases"]:
        said = " ".join(p["detail"].replace(folder, "<folder>").split())
        said = re.sub(r"<folder>\S*", "the drill's temporary folder (removed afterwards)", said)
        assert details[p["name"]] == said, p["name"]
    assert "displaced brain in the drill's temporary folder (removed afterwards)" in details["restore"]


def _unwrapped(screen: list[str]) -> list[str]:
    """The logical lines of `screen`: a row filled to the last column continues on the next one."""
    out: list[str] = []
    carry = False
    for row in screen:
        if carry:
            out[-1] += row
        else:
            out.append(row)
        carry = len(row) >= COLS
    return out


def test_terminal_names_the_json_and_the_html_report(now_run: dict[str, Any]) -> None:
    screen = _unwrapped(now_run["screen"])  # a path longer than the terminal wraps onto the next row
    at = next(i for i, line in enumerate(screen) if line.startswith("report: "))
    named = [screen[at].removeprefix("report: ").strip(), screen[at + 1].strip()]
    assert sorted(named) == sorted([str(now_run["html"]), str(now_run["json"])])
    assert all(Path(p).exists() for p in named)


def test_terminal_short_phases_in_ms_and_no_signed_zero(now_run: dict[str, Any]) -> None:
    screen = now_run["screen"]
    text = "\n".join(screen)
    assert not re.search(r"(?<![\d.])[-+]?0\.0 ?s\b", text), [line for line in screen if "0.0" in line]
    assert re.search(r"^  snapshot +31 ms +snapshot-online 20 ms, snapshot-final 9 ms", text, re.M)
    assert re.search(r"^  restore +11 ms ", text, re.M)
    slowest = screen[screen.index("slowest") + 1:screen.index("slowest") + 4]
    # every slowest phase is about 1% faster than last time: the same, not "-0.0 s (-1%)"
    assert slowest[0] == "  seed         4.1 s  previous 4.1 s, same as last drill"
    assert re.fullmatch(r"  baseline +2\.8 s  previous 5\.8 s, -3\.0 s \(-52%\)", slowest[2])


# -- the page in Chromium ------------------------------------------------------------------------

MEASURE = r"""
<script>
(function () {
  function box(el) { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; }
  function onScreen(el, x, y) { const m = el.getScreenCTM(); return [x * m.a + y * m.c + m.e, x * m.b + y * m.d + m.f]; }
  const out = {charts: {}, facts: {}, texts: {}};
  for (const id of ["timeline", "errors-chart", "latency-chart"]) {
    const svg = document.getElementById(id);
    const c = {marks: {}, overs: [], bars: [], names: [], lines: [], ticks: []};
    svg.querySelectorAll("g.mark").forEach(g => {
      const kind = [...g.classList].find(k => k.startsWith("mark-")).slice(5);
      c.marks[kind] = box(g.querySelector("line")).left + box(g.querySelector("line")).right;
      c.marks[kind] /= 2;
    });
    svg.querySelectorAll("rect.switch-over").forEach(r => c.overs.push(box(r)));
    svg.querySelectorAll("rect.bar").forEach(r => c.bars.push(box(r)));
    svg.querySelectorAll("text.phase-name").forEach(t => c.names.push(t.textContent));
    svg.querySelectorAll("text.tick").forEach(t => c.ticks.push([t.textContent, (box(t).left + box(t).right) / 2]));
    const axis = svg.querySelector("line.axis");
    if (axis) c.base = onScreen(axis, 0, axis.y1.baseVal.value)[1];
    svg.querySelectorAll("path.line").forEach(p => {
      const n = p.getTotalLength(), pts = [];
      for (let s = 0; s <= n; s += 0.25) { const q = p.getPointAtLength(s); pts.push(onScreen(p, q.x, q.y)); }
      c.lines.push(pts);
    });
    out.charts[id] = c;
  }
  document.querySelectorAll(".facts > div").forEach(d => {
    out.facts[d.querySelector("dt").innerText.trim().toLowerCase()] = d.querySelector("dd").innerText.trim();
  });
  const traffic = document.getElementById("errors-chart").closest("section");
  out.texts.traffic = traffic.querySelector(".sub").innerText;
  out.texts.timeline = document.getElementById("timeline").textContent;
  out.texts.slowest = document.getElementById("slowest").innerText;
  const rows = document.getElementById("rows").closest("section");
  out.texts.rows = rows.innerText;
  out.unlabelled = [];
  rows.querySelectorAll("*").forEach(el => {
    const r = el.getBoundingClientRect(), bg = getComputedStyle(el).backgroundColor;
    const painted = bg !== "rgba(0, 0, 0, 0)" && bg !== "transparent";
    if (r.width > 0 && r.height > 0 && !el.textContent.trim() && (painted || ["svg", "img", "canvas"].includes(el.localName)))
      out.unlabelled.push(el.outerHTML.slice(0, 200));
  });
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def _measure(page: Path, work: Path) -> dict[str, Any]:
    """The page as Chromium lays it out, measured by MEASURE run in a copy of it."""
    chromium = chromium_path()
    probe = work / f"measure-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = run_browser(chromium, work / "profile-measure", "--virtual-time-budget=5000", "--dump-dom",
                      probe.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def page(now_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _measure(now_run["html"], tmp_path_factory.mktemp("chromium"))


def _px_per_second(chart: dict[str, Any]) -> float:
    ticks = {label: x for label, x in chart["ticks"] if label.endswith(" s")}
    return (ticks["10 s"] - ticks["0 s"]) / 10


@pytest.mark.browser
def test_errors_are_drawn_on_their_own_side_of_every_mark(page: dict[str, Any],
                                                          now_run: dict[str, Any]) -> None:
    chart, result = page["charts"]["errors-chart"], now_run["result"]
    switch, detect = chart["marks"]["switch"], chart["marks"]["detect"]
    points = [pt for line in chart["lines"] for pt in line]
    failing = [x for x, y in points if y < chart["base"] - 0.5]
    assert failing, "no error drawn at all"
    # 2.3.1 served without an error until the upgrade began to drain it (the data say so): the first error
    # is drawn at that moment, not before it (it was drawn at the start of the whole second that held it)
    t0 = min(p["start"] for p in result["phases"])
    stop = min(o["from"] for o in result["switch_overs"])
    stop_x = _tick(chart, "0 s") + (stop - t0) * _px_per_second(chart)
    assert switch - stop_x > 20  # the switch-over is long enough to tell the two apart on the page
    assert min(failing) >= stop_x - 1.0, (min(failing), stop_x, switch)
    assert min(failing) == pytest.approx(stop_x, abs=1.0)
    upgrade_over = min(chart["overs"], key=lambda o: o["left"])  # 2.3.1 draining, then 2.4.0 starting
    assert upgrade_over["left"] == pytest.approx(stop_x, abs=1.0)
    # what failed before the switch mark failed in the switch-over, and is drawn inside its band
    before = [x for x in failing if x < switch - 0.5]
    assert all(upgrade_over["left"] - 0.5 <= x <= upgrade_over["right"] + 0.5 for x in before)
    assert upgrade_over["right"] == pytest.approx(switch, abs=1.0)
    # and 2.4.0-errors' own failures are drawn after the switch
    assert any(switch + 1 < x < detect - 1 for x in failing)
    # the same marks in every chart: the timeline, the error rate and the latency line up
    for other in ("timeline", "latency-chart"):
        for kind, x in chart["marks"].items():
            assert page["charts"][other]["marks"][kind] == pytest.approx(x, abs=0.5), (other, kind)
    # the data say the same: no error in a bucket that ended before the switch-over began
    assert all(b["errors"] == 0 for b in result["traffic"]["series"] if b["t_end"] <= stop)


@pytest.mark.browser
def test_traffic_is_drawn_from_where_it_started_and_the_subtitle_says_so(page: dict[str, Any]) -> None:
    chart, timeline = page["charts"]["errors-chart"], page["charts"]["timeline"]
    seed_bar = timeline["bars"][timeline["names"].index("seed")]
    first_x = min(x for line in chart["lines"] for x, _ in line)
    assert first_x == pytest.approx(seed_bar["right"], abs=1.5)  # the traffic starts when the seed ends
    started = (first_x - _tick(chart, "0 s")) / _px_per_second(chart)
    said = re.search(r"Traffic from (\d+\.\d) s \(after the seed", page["texts"]["traffic"])
    assert said, page["texts"]["traffic"]
    assert float(said.group(1)) == pytest.approx(started, abs=0.15)
    assert "throughout" not in page["texts"]["traffic"]


def _tick(chart: dict[str, Any], label: str) -> float:
    return next(x for text, x in chart["ticks"] if text == label)


@pytest.mark.browser
def test_every_stretch_of_the_drill_is_a_labelled_phase(page: dict[str, Any], now_run: dict[str, Any]) -> None:
    timeline = page["charts"]["timeline"]
    assert timeline["names"] == PHASES
    bars = sorted(timeline["bars"], key=lambda b: b["left"])
    allowed = 0.25 * _px_per_second(timeline)
    reach = bars[0]["right"]
    for bar in bars[1:]:
        assert bar["left"] - reach <= allowed, (bar, reach)
        reach = max(reach, bar["right"])
    # in the data: from the first phase's start to the last one's end, no stretch of 0.25 s is in no phase
    phases = sorted(now_run["result"]["phases"], key=lambda p: p["start"])
    end = phases[0]["start"] + phases[0]["seconds"]
    for p in phases[1:]:
        assert p["start"] - end < 0.25, p["name"]
        end = max(end, p["start"] + p["seconds"])
    assert "pre-flight" in page["texts"]["timeline"]


@pytest.mark.browser
def test_the_header_names_the_signals_that_triggered(page: dict[str, Any]) -> None:
    facts = page["facts"]
    assert facts["break"].splitlines() == ["errors", "meant to show first in errors (also in evals)"]
    triggered = facts["triggered by"].splitlines()
    assert triggered[0] == "evals"  # the verdict's only trigger in this drill
    assert triggered[1] == "errors did not trigger yet: too little data (36% of 33, baseline 0% of 188)"
    assert "detected by" not in json.dumps(facts)


def test_the_header_lists_every_trigger_the_expected_one_first() -> None:
    result = _load(NOW)
    result["trigger"] = ["evals", "errors"]
    page = render_html(result, [])
    fact = re.search(r"<dt>triggered by</dt>\s*<dd[^>]*>([^<]*)", page)
    assert fact and fact.group(1) == "errors, evals"


@pytest.mark.browser
def test_the_rows_table_has_no_unlabelled_bars(page: dict[str, Any]) -> None:
    assert page["unlabelled"] == []
    assert "In all 256 written, 256 salvaged, 0 lost." in page["texts"]["rows"]


@pytest.mark.browser
def test_short_phases_read_in_ms_and_equal_times_read_the_same(page: dict[str, Any]) -> None:
    timeline = page["texts"]["timeline"]
    assert "0.0 s" not in timeline and "31 ms" in timeline and "11 ms" in timeline
    slowest = page["texts"]["slowest"]
    assert "same as last drill (4.1 s)" in slowest and "-3.0 s (-52%) vs 5.8 s last time" in slowest
    assert not re.search(r"[-+]0\.0 s", slowest)


def test_the_older_recording_renders_without_its_removed_paths() -> None:
    result = _load(OLDER)
    assert result["staging_folder"] in json.dumps(result)  # the data keep them
    assert result["staging_folder"] not in render_html(result, [])
    assert result["staging_folder"] not in "\n".join(render_terminal(result, 100))


def test_traffic_buckets_are_cut_at_every_mark() -> None:
    from backout.flows.drill_traffic import Traffic, Turn

    class Recorded(Traffic):  # turns are appended by the test; nothing is sent
        def _run(self) -> None:
            pass

    traffic = Recorded(rate=8)
    traffic.started_at = 100.0
    # 2.3.1 answers well until 104.3, nothing answers until 105.1, then 2.4.0 fails every other turn
    for i in range(80):
        at = 100.0 + i / 8
        status = 200 if at < 104.3 else 0 if at < 105.1 else (500 if i % 2 else 200)
        traffic.turns.append(Turn(at, f"t{i}", status, status == 200, 40.0))
    series = traffic.series([104.3, 105.1, 107.77])
    bounds = [b["t"] for b in series] + [series[-1]["t_end"]]
    assert bounds[0] == 100.0 and bounds[-1] == traffic.turns[-1].at
    for edge in (104.3, 105.1, 107.77):
        assert any(abs(edge - b) < 1e-6 for b in bounds), edge
    assert all(0.5 <= b["t_end"] - b["t"] <= 1.5 for b in series if b["t_end"] <= 104.3)
    assert sum(b["requests"] for b in series) == 80
    assert all(b["errors"] == 0 for b in series if b["t_end"] <= 104.3)
    over = next(b for b in series if b["t"] == pytest.approx(104.3))
    assert over["t_end"] == pytest.approx(105.1) and over["errors"] == over["no_answer"] == over["requests"]
