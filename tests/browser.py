"""Headless Chromium for report tests: find it (fail in CI, skip elsewhere), run it, keep screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["artifacts_dir", "chromium_path", "run_browser"]

REPO = Path(__file__).resolve().parent.parent


def chromium_path() -> str:
    """The system Chromium; a failure with BACKOUT_REQUIRE_BROWSER=1, else a skip, when there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = ("no chromium or chromium-browser on PATH (apt-get install --no-install-recommends "
               "chromium; scripts/install-system-packages.sh)")
    if os.environ.get("BACKOUT_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def artifacts_dir() -> Path:
    """Where tests leave screenshots ($BACKOUT_ARTIFACTS, else test-artifacts/)."""
    folder = Path(os.environ.get("BACKOUT_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with its own profile folder, 1280 x 2400."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
           "--window-size=1280,2400", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
