"""The set-up scripts use only what the machine is configured with: the Debian mirror for the base
image comes from the machine's apt sources (or BACKOUT_DEBIAN_MIRROR), never a guessed public one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "docker" / "build-images.sh"


def _mirror(apt_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the script's own debian_mirror function (cut out of it) against `apt_dir`."""
    text = SCRIPT.read_text()
    start = text.index("debian_mirror() {")
    body = text[start:text.index("\n}\n", start) + 3]
    program = "set -euo pipefail\ndie() { printf 'ERROR: %s\\n' \"$*\" >&2; exit 1; }\n" + body + \
        'mirror="$(debian_mirror)"\necho "$mirror"\n'
    clean = {k: v for k, v in os.environ.items() if k != "BACKOUT_DEBIAN_MIRROR"}
    return subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                          env={**clean, "BACKOUT_APT_DIR": str(apt_dir), **env})


def test_the_mirror_comes_from_the_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example.internal/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example.internal/debian\nSuites: bookworm\n")
    out = _mirror(tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "http://mirror.example.internal/debian", out.stderr


def test_no_configured_mirror_is_an_error_that_says_what_to_set(tmp_path: Path) -> None:
    out = _mirror(tmp_path)
    assert out.returncode == 1 and out.stdout.strip() == ""
    assert "no Debian mirror" in out.stderr and "BACKOUT_DEBIAN_MIRROR" in out.stderr
    assert "deb.debian.org" not in out.stdout + out.stderr
    assert _mirror(tmp_path, BACKOUT_DEBIAN_MIRROR="http://m.internal/debian").stdout.strip() == \
        "http://m.internal/debian"
