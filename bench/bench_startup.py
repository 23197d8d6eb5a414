"""Start-up time of the `backout` command against a bare interpreter: `python -c pass`, `backout --version`,
`backout --help` and `backout status --config X` (X a minimal config written to a temporary folder: a
process deployment with a small brain and nothing running), each run ~15 times in turn; the medians and
ratios go to bench/RESULTS.md. Target: `backout --help` at most 0.2 s more than `python -c pass`.

Usage: python bench/bench_startup.py [--runs 15] [--compare REV] [--results bench/RESULTS.md]
--compare REV also times the same three commands of an older revision (its src/ from `git archive`, run as
`python -m backout`). Run by `make bench-startup` (under a minute). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.2  # `backout --help` may take this much longer than a bare interpreter start


def backout_command() -> list[str]:
    """The installed console script next to this interpreter (what a person runs), else `python -m backout`."""
    script = Path(sys.executable).parent / "backout"
    return [str(script)] if script.exists() else [sys.executable, "-m", "backout"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path) -> Path:
    """A minimal backout.toml: a process deployment, a small brain, a health URL nothing answers on."""
    brain = folder / "brain.sqlite"
    conn = sqlite3.connect(brain)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(100)])
    conn.commit()
    conn.close()
    port = free_port()
    config = folder / "backout.toml"
    config.write_text(f"""state_dir = ".backout"

[deployments.app]
brain = "brain.sqlite"
health_url = "http://127.0.0.1:{port}/health"
runtime = "process"

[deployments.app.process]
command = "{sys.executable} -m http.server --bind 127.0.0.1 {{port}}"
port = {port}
""")
    return config


def child_env(folder: Path) -> dict[str, str]:
    """The environment of every timed command: bytecode cached (in `folder`, not in the source tree), as an
    installed program has it, even where PYTHONDONTWRITEBYTECODE is set; the warm-up run fills the cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("BACKOUT_")}
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    return env


Commands = dict[str, tuple[list[str], dict[str, str]]]  # name -> (argv, environment added)


def time_once(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return seconds


def measure(commands: Commands, runs: int, cwd: Path) -> dict[str, list[float]]:
    """Each command `runs` times, in turn (so a change of machine load hits all of them alike), after one
    warm-up run each."""
    env = child_env(cwd)
    for argv, extra in commands.values():
        time_once(argv, cwd, {**env, **extra})
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (argv, extra) in commands.items():
            times[name].append(time_once(argv, cwd, {**env, **extra}))
    return times


def older(rev: str, folder: Path, config: Path) -> Commands:
    """The three commands of revision `rev`: its src/ unpacked into `folder`, first on PYTHONPATH."""
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    extra = {"PYTHONPATH": str(folder / "src")}
    program = [sys.executable, "-m", "backout"]
    return {f"backout --version at {rev}": ([*program, "--version"], extra),
            f"backout --help at {rev}": ([*program, "--help"], extra),
            f"backout status --config X at {rev}": ([*program, "status", "--config", str(config)], extra)}


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() + (" + uncommitted src/ changes" if dirty.stdout.strip() else "")


def render(times: dict[str, list[float]], runs: int, load: tuple[str, str], program: list[str],
           compare: str | None) -> str:
    """The RESULTS.md section."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    bare = statistics.median(times["python -c pass"])
    help_over = statistics.median(times["backout --help"]) - bare
    machine = (f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
               f"commit {_commit()}")
    lines = [
        f"## {now} — start-up time (`bench/bench_startup.py`)",
        "",
        f"Machine: {machine}. Load average (1/5/15 min) at the start {load[0]}, at the end {load[1]}. "
        f"{runs} runs of each command in turn after one warm-up run each, bytecode cached (as installed); "
        f"`backout` is `{' '.join(program)}`; `status` reads a minimal config (a process deployment, a "
        "100-row brain, nothing running, so the health probe is refused at once)"
        + (f"; \"at {compare}\": the same commands of revision {compare} (`python -m backout`, its src/ first on "
           "PYTHONPATH), timed in the same rounds" if compare else "") + ".",
        "",
        "| command | median (s) | min (s) | max (s) | over `python -c pass` (s) | × `python -c pass` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| `{name}` | {median:.3f} | {min(values):.3f} | {max(values):.3f} | "
                     f"{median - bare:+.3f} | {median / bare:.1f}× |")
    lines += [
        "",
        f"Target `backout --help` ≤ `python -c pass` + {TARGET_S:.1f} s: {help_over:+.3f} s, "
        f"**{'met' if help_over <= TARGET_S else 'MISSED'}**.",
        "",
    ]
    return "\n".join(lines) + "\n"


def write_results(path: Path, section: str) -> None:
    """Insert the section after the file's introduction (newest first)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    at = text.find("\n## ")
    text = text + "\n" + section if at < 0 else text[:at + 1] + section + "\n" + text[at + 1:]
    path.write_text(text)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--compare", metavar="REV", help="also time these commands at an older revision")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    program = backout_command()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        config = write_config(folder)
        commands: Commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], {}),
            "backout --version": ([*program, "--version"], {}),
            "backout --help": ([*program, "--help"], {}),
            "backout status --config X": ([*program, "status", "--config", str(config)], {}),
        }
        if args.compare:
            (folder / "older").mkdir()
            commands.update(older(args.compare, folder / "older", config))
        start_load = _load()
        times = measure(commands, args.runs, folder)
        section = render(times, args.runs, (start_load, _load()), program, args.compare)
    write_results(args.results, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
