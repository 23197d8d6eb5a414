"""`backout drill` as a person runs it, on a recorded drill: `python tests/drill_replay.py RECORDING [ARGS...]`.

Everything of the command is real (its options, the self-contained staging folder it makes, the live status
line, the report files written into ./.backout/drills with the history there, the summary it prints) except the
rehearsal itself: instead of starting the Engine and upgrading it, the drill's result is read from RECORDING (the
JSON report of a real drill, tests/recordings/drill/), its phases are announced one by one as a drill announces
them, and the staging folder is removed as after a green drill. A test runs this in a pseudo-terminal and reads
the screen; the page it writes is what a browser then renders.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import backout.flows.drill_run as drill_run
from backout.report import load_history, slowest_phases, write_report


def _replay(recording: Path) -> Callable[..., dict[str, Any]]:
    def run_drill(staging: Any, mode: str, plan: Any, on_phase: Callable[[dict[str, Any]], None] | None = None,
                  watch_s: float = 45, keep: bool = False) -> dict[str, Any]:
        result = json.loads(recording.read_text(encoding="utf-8"))
        for phase in result.get("phases") or []:
            if on_phase:
                on_phase(phase)
            time.sleep(0.02)
        folder = drill_run.drills_folder(staging)
        history = load_history(folder)
        result["slowest"] = slowest_phases(result, history)
        json_path, html_path = write_report(folder, result, history)
        result["report"] = {"json": str(json_path), "html": str(html_path)}
        staging.cleanup()  # as after a green drill without --keep
        return result
    return run_drill


def main() -> None:
    recording, args = Path(sys.argv[1]).resolve(), sys.argv[2:]
    drill_run.run_drill = _replay(recording)  # cli/drill.py imports it from the module when the drill runs
    from backout.cli.main import main as backout

    sys.argv = ["backout", "drill", *args]
    backout()


if __name__ == "__main__":
    main()
