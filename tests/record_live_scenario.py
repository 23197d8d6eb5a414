"""Record a live `backout check` into a scenario file: python tests/record_live_scenario.py BUILD LABEL OUT.

Runs the reference Engine on 2.3.1 under `engine traffic`, captures the baseline, switches to BUILD,
keeps the traffic going for three windows, then writes the observations the check saw (every
request and probe) with the verdict label into OUT, for tests/test_signals_decide.py to replay."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_signals_live import ENV, WINDOW, _deployment, _traffic  # noqa: E402

from backout.config import resolve_target  # noqa: E402
from backout.flows.check import observe, policy_of  # noqa: E402
from backout.runtime.factory import runtime_for  # noqa: E402
from backout.signals.decide import decide  # noqa: E402
from backout.signals.scenario import record_scenario  # noqa: E402
from backout_cli import backout  # noqa: E402


def main(build: str, label: str, out: Path) -> None:
    import os

    os.environ.update(ENV)
    with tempfile.TemporaryDirectory() as tmp:
        config, url = _deployment(Path(tmp))
        cfg = ["--config", str(config)]
        try:
            backout("switch", "2.3.1", "--yes", *cfg, env=ENV)
            _traffic(url, 15).join()
            backout("baseline", "capture", "--no-evals", *cfg, env=ENV)
            backout("switch", build, "--yes", *cfg, env=ENV)
            _traffic(url, 3 * WINDOW + 2).join()
            time.sleep(1)
            target = resolve_target(config)
            obs = observe(target, runtime_for(target), with_evals=False)
            verdict = decide(obs, policy_of(target.require_settings()))
            record_scenario(obs, label, out, policy=policy_of(target.require_settings()),
                            triggers=tuple(verdict.triggers),
                            description=f"recorded live: 2.3.1 -> {build} under engine traffic at 10/s")
            print(f"{out}: {verdict.decision} ({verdict.reason})")
        finally:
            backout("stop", "--yes", *cfg, env=ENV)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
