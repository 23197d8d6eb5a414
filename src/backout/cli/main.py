"""The `backout` command: global options and the command groups."""

from __future__ import annotations

from typing import Optional

import typer

from backout import __version__

__all__ = ["app", "main"]

app = typer.Typer(
    help=(
        "Make upgrades of an SQLite-backed service safe to undo: upgrade with a restore point, "
        "decide when to roll back, roll back the image and, when forward-only migrations made the "
        "brain unreadable for the old version, the brain too, without losing the bad window's "
        "writes; and rehearse it all in timed drills."
    ),
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


def _register() -> None:
    """Attach the command groups (imported here so `backout --version` stays fast)."""
    from backout.cli import (check, deploy, drill, history, init, rollback, salvage, schema, snapshot,
                             status, upgrade, volume)

    app.add_typer(snapshot.app, name="snapshot")
    app.add_typer(schema.app, name="schema", help="Schema stamps and diffs: can an older version read this brain?")
    app.add_typer(salvage.app, name="salvage",
                  help="The bad window's rows: extract them, show an incident's, replay them.")
    app.command("init")(init.init)
    app.command("status")(status.status)
    app.command("history")(history.history)
    app.command("switch")(deploy.switch)
    app.command("stop")(deploy.stop)
    app.command("check")(check.check)
    app.add_typer(check.baseline_app, name="baseline")
    app.command("drill")(drill.drill)
    app.add_typer(volume.app, name="volume")
    app.command("upgrade")(upgrade.upgrade)
    app.command("watch")(upgrade.watch_command)
    app.command("rollback")(rollback.rollback)
    app.command("freeze")(rollback.freeze)
    app.command("unfreeze")(rollback.unfreeze)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="backout")
