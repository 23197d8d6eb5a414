"""What a person sees on a terminal during `backout upgrade`: the live watch table, read from a real
pseudo-terminal and rendered by a terminal emulator (pexpect + pyte), frame by frame."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pyte
import pytest

from backout_cli import backout, backout_json
from rollback_setup import ENV, live_deployment, traffic, url_of

pytestmark = [pytest.mark.slow, pytest.mark.rehearsal]

ROWS, COLUMNS = 50, 120


def _watch_on_a_terminal(config: Path, *argv: str) -> tuple[int, list[tuple[float, list[str]]]]:
    """Run backout in a pseudo-terminal; its exit code and every screen it drew (time, lines)."""
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")} | ENV | {"TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "backout", *argv, "--config", str(config)], env=env,
                          dimensions=(ROWS, COLUMNS), timeout=300)
    frames: list[tuple[float, list[str]]] = []
    while True:
        try:
            stream.feed(child.read_nonblocking(65536, timeout=0.2))
        except pexpect.TIMEOUT:
            continue
        except pexpect.EOF:
            break
        frames.append((time.monotonic(), [line.rstrip() for line in screen.display]))
    child.close()
    return child.exitstatus, frames


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """2.3.1 under traffic, then `backout upgrade 2.4.0-errors` watched on a terminal until it rolls back."""
    config = live_deployment(tmp_path_factory.mktemp("watch-view"), "40s", evals=False)  # errors decide
    cfg = ["--config", str(config)]
    assert backout_json("switch", "2.3.1", "--yes", *cfg, env=ENV)["healthy"]
    traffic(url_of(config), 12).join()  # the baseline
    traffic(url_of(config), 60)
    try:
        yield _watch_on_a_terminal(config, "upgrade", "2.4.0-errors", "--yes", "--watch", "40s")
    finally:
        backout("stop", "--yes", *cfg, env=ENV)


def _seen(frames: list[tuple[float, list[str]]]) -> list[str]:
    """Every line that was on the screen at some point, in the order first seen."""
    lines: dict[str, None] = {}
    for _, screen in frames:
        lines.update(dict.fromkeys(line for line in screen if line.strip()))
    return list(lines)


def test_the_upgrade_rolls_back_and_says_why(rolled_back) -> None:  # type: ignore[no-untyped-def]
    code, frames = rolled_back
    seen = _seen(frames)
    assert code == 1, "\n".join(seen)
    summary = next(line for line in seen if line.startswith("ROLLED BACK: 2.4.0-errors -> 2.3.1"))
    assert "because error rate" in summary, summary


def test_the_countdown_ticks_between_checks(rolled_back) -> None:  # type: ignore[no-untyped-def]
    _, frames = rolled_back
    shown: list[int] = []
    for _, screen in frames:
        for line in screen:
            found = re.match(r"watching engine: (\d+)s left", line)
            if found and (not shown or shown[-1] != int(found.group(1))):
                shown.append(int(found.group(1)))
    steps = [a - b for a, b in zip(shown, shown[1:])]
    # checks come every 3 s; a countdown that only moved with them would step by 3
    assert steps.count(1) >= 4, shown


def test_the_rollbacks_steps_follow_the_last_table(rolled_back) -> None:  # type: ignore[no-untyped-def]
    _, frames = rolled_back
    seen = _seen(frames)
    done = [re.match(r"  rollback: done (\S+)", line) for line in seen]
    steps = [m.group(1) for m in done if m]
    assert {"drain", "restore", "start", "verify", "record"} <= set(steps), "\n".join(seen)
    final = frames[-1][1]
    table_end = max(i for i, line in enumerate(final) if line.startswith("└"))
    assert any(line.startswith("  rollback: done") for line in final[table_end:]), "\n".join(final)


def test_the_reason_starts_at_the_left_edge(rolled_back) -> None:  # type: ignore[no-untyped-def]
    _, frames = rolled_back
    seen = _seen(frames)
    reasons = [line for line in seen if "rolling back to 2.3.1:" in line or re.search(r"inconclusive: |hold: ", line)]
    assert reasons and all(not line.startswith(" ") for line in reasons), reasons


def test_a_row_with_enough_requests_never_says_too_little_data(rolled_back) -> None:  # type: ignore[no-untyped-def]
    _, frames = rolled_back
    rows = [line for line in _seen(frames) if line.startswith("│ errors")]
    for row in rows:
        cells = [c.strip() for c in row.strip("│").split("│")]
        now = re.match(r"[\d.]+% of (\d+)", cells[2])
        if now and int(now.group(1)) >= 25:  # min_requests of the deployment
            assert cells[4] != "too little data", row
    assert any("trigger" in row for row in rows), rows


def test_no_progress_bar_is_left_in_the_step_lines(rolled_back) -> None:  # type: ignore[no-untyped-def]
    _, frames = rolled_back
    final = frames[-1][1]
    assert not [line for line in final if "━" in line and "done" in line], "\n".join(final)
