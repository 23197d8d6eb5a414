"""Quickstart: start the reference Engine on loopback, send one turn, show /health, drain, stop.

Run it with `make quickstart`. Everything happens in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RELEASE = "2.3.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"quickstart: the Engine exited with code {proc.returncode} before it was healthy")
        try:
            r = httpx.get(f"{url}/health", timeout=1)
            if r.status_code == 200:
                return dict(r.json())
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit("quickstart: the Engine did not become healthy within 20 s")


def main() -> None:
    engine = Path(sys.executable).with_name("engine")
    with tempfile.TemporaryDirectory(prefix="backout-quickstart-") as tmp:
        brain, port = Path(tmp) / "brain.sqlite", free_port()
        url = f"http://127.0.0.1:{port}"
        key = secrets.token_urlsafe(24)  # passed in the environment, never on argv
        env = {**os.environ, "ENGINE_API_KEY": key}
        argv = [str(engine), "serve", "--release", RELEASE, "--brain", str(brain), "--port", str(port)]
        print(f"$ {' '.join(argv)}")
        log = open(Path(tmp) / "engine.log", "wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, proc, time.monotonic() + 20)
            message = "The launch codename is Bluebird. I met Priya and Marcus about it."
            print(f"\nPOST /execute  {message!r}")
            with httpx.stream("POST", f"{url}/execute", headers={"X-Engine-Key": key},
                              json={"message": message, "task_id": "quickstart-1"}, timeout=10) as r:
                for line in r.iter_lines():
                    if line:
                        print(f"  {line}")
            print("\nGET /health")
            print(json.dumps(httpx.get(f"{url}/health", timeout=5).json(), indent=2))
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            log.close()
        print(f"\nEngine drained and exited with code {code}; brain was {brain.stat().st_size} bytes.")


if __name__ == "__main__":
    main()
