"""What every command shares: choosing the deployment, output as text or JSON, errors, progress."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

from backout.config import ConfigError, Target, resolve_target
from backout.errors import EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_USAGE, BackoutError
from backout.brain.sqlite_errors import explain
from backout.fsutil import check_version, describe_os_error

__all__ = [
    "ConfigOpt", "DeploymentOpt", "BrainOpt", "IntoOpt", "JsonOpt", "YesOpt", "DryRunOpt",
    "utc_time", "time_and_age", "yes_no", "or_word",
    "abandon_journal", "fail", "version_arg", "emit_json", "target_from", "progress_bar", "confirm", "human_bytes", "human_age", "handle_errors", "say",
]

ConfigOpt = typer.Option(None, "--config", "-c", metavar="FILE", readable=False, help="backout.toml to use (default: ./backout.toml or $BACKOUT_CONFIG).")
DeploymentOpt = typer.Option(None, "--deployment", "-d", metavar="NAME", help="Deployment in the config (needed when it has several).")
BrainOpt = typer.Option(None, "--brain", metavar="PATH", help="The brain (SQLite file); without a config this names the deployment.")
IntoOpt = typer.Option(None, "--into", metavar="DIR", help="Snapshot folder (default: from the config, or ./.backout/snapshots).")
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts instead of text.")
YesOpt = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
DryRunOpt = typer.Option(False, "--dry-run", help="Show what would be done and change nothing.")

err_console = Console(stderr=True, highlight=False)


def say(line: str) -> None:
    """A line for a person on stderr; on a terminal it goes above any progress bar or live view instead of
    through it. Never wrapped or styled: the text is as written."""
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr, then exit with `code`."""
    typer.echo(f"backout: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn BackoutError (and config errors) into one line and the right exit code."""
    try:
        yield
    except BackoutError as exc:
        fail(str(exc), exc.exit_code)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(describe_os_error(exc, Path(exc.filename or ".")), EXIT_ENVIRONMENT)
    except sqlite3.Error as exc:
        fail(*explain(exc, None))
    except KeyboardInterrupt:
        fail("interrupted; `backout status` lists anything left unfinished with the command that finishes it",
             EXIT_INTERRUPTED)


def version_arg(value: Optional[str]) -> Optional[str]:
    """Typer callback: a version names files and goes into argv, so `../x`, `-x` or `a/b` end with exit 2."""
    if value is not None:
        try:
            check_version(value)
        except BackoutError as exc:
            fail(str(exc), exc.exit_code)
    return value


def emit_json(data: Any) -> None:
    """Print `data` as JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


def target_from(config: Optional[Path], deployment: Optional[str], brain: Optional[Path],
                into: Optional[Path] = None) -> Target:
    """Resolve the deployment a command works on."""
    try:
        return resolve_target(config, deployment, brain, into)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def confirm(question: str, yes: bool) -> None:
    """Ask before changing something, unless --yes; without a terminal, --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question} — refusing without a terminal to ask; pass --yes", EXIT_USAGE)
    if not typer.confirm(question, default=False, err=True):  # stderr: stdout may be --json
        fail("cancelled; nothing was changed", 1)


class _Bar:
    """A rich progress bar on stderr that appears only when work lasts over a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and err_console.is_terminal
        self.start = time.monotonic()
        self.bar: RichProgress | None = None
        self.task: Any = None
        self.name, self.total, self.done = "", None, 0

    def phase(self, name: str, total: int | None = None) -> None:
        self.name, self.total, self.done = name, total, 0
        if self.bar is not None:
            self.task = self.bar.add_task(name, total=total)
        self._maybe_start()

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=amount)
        else:
            self._maybe_start()

    def _maybe_start(self) -> None:
        if self.bar is None and self.enabled and time.monotonic() - self.start > 1.0:
            self.bar = RichProgress(TextColumn("{task.description:<8}"), BarColumn(), DownloadColumn(),
                                    TimeElapsedColumn(), console=err_console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=self.total, completed=self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[_Bar]:
    """A Progress sink for library calls; silent when stderr is not a terminal or with --json."""
    bar = _Bar(enabled)
    try:
        yield bar
    finally:
        bar.close()


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_age(seconds: float) -> str:
    """3700 -> '1h 1m'."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def utc_time(when: float | str | None, missing: str = "unknown") -> str:
    """An epoch (seconds) or an ISO time, as ISO 8601 UTC to the second: '2026-12-04T10:15:00+00:00'."""
    if when is None or when == "":
        return missing
    try:
        moment = datetime.fromtimestamp(float(when), timezone.utc)
    except ValueError:
        try:
            moment = datetime.fromisoformat(str(when))
        except ValueError:
            return str(when)  # not a time after all: shown as it was recorded
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def time_and_age(epoch: float | None, missing: str = "unknown") -> str:
    """'2026-12-04T10:15:00+00:00 (5m ago)'."""
    if epoch is None:
        return missing
    return f"{utc_time(epoch)} ({human_age(time.time() - epoch)} ago)"


def yes_no(value: bool | None, unknown: str = "unknown") -> str:
    """True -> 'yes', False -> 'no', None -> `unknown`."""
    return unknown if value is None else "yes" if value else "no"


def or_word(value: Any, word: str = "none") -> str:
    """`value` as text, or `word` when there is none (None or empty)."""
    return word if value is None or value == "" else str(value)


def abandon_journal(target: Target, path: Path, what: str, yes: bool) -> None:
    """`--abandon`: set an interrupted operation's journal aside (kept, renamed), saying where things are."""
    from backout.flows.journals import abandon

    if not path.exists():
        fail(f"there is no interrupted {what} to abandon", EXIT_USAGE)
    confirm(f"set the interrupted {what} aside (the service stays as it is now)?", yes)
    with handle_errors():
        lines = abandon(target, path, what)
    for line in lines:
        typer.echo(line)
