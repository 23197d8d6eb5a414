"""The `backout` command: global options and the commands, each imported only when it runs.

`backout --help` and `backout --version` import no command module: the commands and their one-line help
are listed here as data (`COMMANDS`), and `LazyGroup` imports a command's module when it is resolved.
"""

from __future__ import annotations

from typing import Optional

import typer

from backout import __version__
from backout.cli.framework import Lazy, LazyGroup

__all__ = ["app", "main", "COMMANDS"]

# name -> where the command lives and its line in `backout --help`, in the order listed there.
COMMANDS: dict[str, Lazy] = {
    "init": Lazy("backout.cli.init", "init", "Write a commented backout.toml for one deployment."),
    "status": Lazy("backout.cli.status", "status", "What runs, its health, the brain, snapshots, the restore point."),
    "history": Lazy("backout.cli.history", "history", "Every change of version: when, from, to, outcome."),
    "incidents": Lazy("backout.cli.incidents", "incidents", "Every rollback's incident: id, time, versions, layer, outcome."),
    "switch": Lazy("backout.cli.deploy", "switch", "Drain, migrate, start VERSION, wait until healthy (no snapshot)."),
    "stop": Lazy("backout.cli.deploy", "stop", "Drain and stop what runs."),
    "check": Lazy("backout.cli.check", "check", "The rollback verdict now, with its evidence."),
    "drill": Lazy("backout.cli.drill", "drill", "Rehearse a rollback, timed, on a staging deployment."),
    "upgrade": Lazy("backout.cli.upgrade", "upgrade", "Upgrade with a restore point, then watch, ready to roll back."),
    "watch": Lazy("backout.cli.upgrade", "watch_command", "Watch the last upgrade again (after Ctrl-C)."),
    "rollback": Lazy("backout.cli.rollback", "rollback", "Roll back the image and, when needed, the brain."),
    "freeze": Lazy("backout.cli.rollback", "freeze", "Refuse VERSION in upgrades and switches."),
    "unfreeze": Lazy("backout.cli.rollback", "unfreeze", "Lift the freeze on VERSION, saying why."),
    "snapshot": Lazy("backout.cli.snapshot", "app", "Verified snapshots of a live brain; restore with quarantine."),
    "schema": Lazy("backout.cli.schema", "app", "Schema stamps and diffs: can an older version read this brain?"),
    "salvage": Lazy("backout.cli.salvage", "app", "The bad window's rows: extract, show, replay."),
    "baseline": Lazy("backout.cli.check", "baseline_app", "The good version's requests, health and evals."),
    "volume": Lazy("backout.cli.volume", "app", "Snapshots of the whole data volume (local, ebs, gcp)."),
}


class Backout(LazyGroup):
    lazy = COMMANDS


app = typer.Typer(
    help=(
        "Make upgrades of an SQLite-backed service safe to undo: upgrade with a restore point, "
        "decide when to roll back, roll back the image and, when forward-only migrations made the "
        "brain unreadable for the old version, the brain too, without losing the bad window's "
        "writes; and rehearse it all in timed drills.\n\n"
        "Every command explains itself with --help.\n\n"
        "\b\n"
        "Examples:\n"
        "  backout init --runtime compose --compose-file docker-compose.yml --service engine\n"
        "  backout upgrade 2.4.0 --watch 15m"
    ),
    cls=Backout,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"backout {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Plan rollback before you need it."""


def main() -> None:
    """Console-script entry point."""
    app(prog_name="backout")
