"""A child process for tests/test_volume_local.py: one LocalVolume operation, so a crash (SIGKILL
from BACKOUT_FAULT_AT) is real, and so a private mount namespace (`unshare -m`) can hold a mount.

    python volume_child.py [--bind] [--no-exchange] snapshot PATH STATE
    python volume_child.py [--bind] [--no-exchange] restore PATH STATE SNAPSHOT_ID

--bind          bind-mount PATH on itself first (run under `unshare -m --propagation private`): PATH
                becomes a mount point, as a docker volume is, and the mount ends with this process
--tmpfs-state N mount a tmpfs of N KiB on STATE first (same namespace needed): a small disk
--no-exchange   behave as on a filesystem without renameat2(RENAME_EXCHANGE): the test replaces
                backout's exchange() by one that says "not supported" (the fallback is real code)
Prints the result as one JSON line; a VolumeError prints {"error": ..., "exit_code": ...} and exits 3.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from backout.config import VolumeSettings
from backout.volumes import Hooks, VolumeError
from backout.volumes import local


def main(argv: list[str]) -> int:
    if "--bind" in argv:
        argv.remove("--bind")
        subprocess.run(["mount", "--bind", argv[1], argv[1]], check=True)
    if "--tmpfs-state" in argv:
        at = argv.index("--tmpfs-state")
        size = argv[at + 1]
        del argv[at:at + 2]
        Path(argv[2]).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", argv[2]], check=True)
    if "--no-exchange" in argv:
        argv.remove("--no-exchange")
        local.exchange = lambda a, b: False  # type: ignore[assignment]
    op, path, state = argv[0], Path(argv[1]), Path(argv[2])
    volume = local.LocalVolume(VolumeSettings(provider="local", path=path), "engine", state)
    try:
        if op == "snapshot":
            print(json.dumps(volume.snapshot({"version": "2.3.1"}).to_dict()))
        else:
            print(json.dumps(volume.restore(argv[3], Hooks(lambda: None, lambda: None)).to_dict()))
    except VolumeError as exc:
        print(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
