"""`backout schema`: stamp a brain, diff two brains, lint a folder of migrations.

Exit codes: 0 identical or additive only, 1 a migration file failed to execute (lint),
2 bad input (nothing is written), 3 a breaking change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from backout import errors
from backout.cli.common import emit_json, fail
from backout.cli.framework import Typer
from backout.brain.schema import LintReport, SchemaDiff, SchemaError, SchemaStamp, diff, lint, stamp

__all__ = ["EXIT_BAD_INPUT", "EXIT_BREAKING", "EXIT_LINT_ERROR", "EXIT_OK", "app"]

EXIT_OK = errors.EXIT_OK
EXIT_LINT_ERROR = errors.EXIT_FAILED
EXIT_BAD_INPUT = errors.EXIT_USAGE
EXIT_BREAKING = errors.EXIT_REFUSED  # "a reader of A would refuse B": the same code as a safety refusal

app = Typer(
    help=(
        "Schema stamps, diffs and migration lint: will the old version still read the brain? "
        "Exit codes: 0 identical or additive only, 1 a migration file failed (lint), "
        "2 bad input, 3 breaking.\n\n"
        "\b\nExamples:\n"
        "  backout schema stamp /data/brain.sqlite\n"
        "  backout schema diff .backout/snapshots/engine/20261204T101500Z-3f9a1c.sqlite /data/brain.sqlite"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit 2: the caller fixes the input and runs again."""
    fail(message, EXIT_BAD_INPUT)


_echo_json = emit_json


def _stamp_or_fail(path: Path) -> SchemaStamp:
    try:
        return stamp(path)
    except SchemaError as exc:
        _fail(str(exc))


@app.command("stamp")
def stamp_command(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="The brain (SQLite file).", show_default=False)
    ],
    as_json: JsonOption = False,
) -> None:
    """Print the schema stamp of a brain: migration head, its source, fingerprint, tables.

    The brain is opened read-only. Exit 0, or 2 when PATH is not a readable SQLite file.

    \b
    Examples:
      backout schema stamp /data/brain.sqlite
      backout schema stamp /data/brain.sqlite --json
    """
    found = _stamp_or_fail(path)
    if as_json:
        _echo_json(found.to_dict())
        return
    head = f"{found.head} ({found.head_source})" if found.head is not None else "none"
    typer.echo(f"head: {head}")
    typer.echo(f"user_version: {found.user_version}")
    typer.echo(f"fingerprint: {found.fingerprint}")
    typer.echo(f"tables: {len(found.tables)}")


def _verdict(result: SchemaDiff) -> str:
    if result.identical:
        return "identical"
    if result.additive_only:
        return "additive only: a reader of A can read B"
    count = len(result.breaking)
    return (
        f"breaking: {count} change{'s' if count != 1 else ''} a reader of A may fail on; "
        "rolling back to A's version needs A's brain, not only A's image"
    )


@app.command("diff")
def diff_command(
    a: Annotated[
        Path,
        typer.Argument(metavar="A", help="The brain before (e.g. a snapshot).", show_default=False),
    ],
    b: Annotated[Path, typer.Argument(metavar="B", help="The brain after.", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Classify every schema change from brain A to brain B as additive or breaking.

    Exit 0 when identical or additive only (a reader of A can read B), 3 when any change is
    breaking, 2 on bad input.

    \b
    Examples:
      backout schema diff .backout/snapshots/engine/20261204T101500Z-3f9a1c.sqlite /data/brain.sqlite
      backout schema diff old.sqlite new.sqlite --json
    """
    before, after = _stamp_or_fail(a), _stamp_or_fail(b)
    result = diff(before, after)
    if as_json:
        _echo_json(
            {
                **result.to_dict(),
                "verdict": _verdict(result),
                "a": {"head": before.head, "fingerprint": before.fingerprint},
                "b": {"head": after.head, "fingerprint": after.fingerprint},
            }
        )
    else:
        for change in result.changes:
            typer.echo(f"{change.kind:<9} {change.object:<8} {change.where}  {change.detail}")
        typer.echo(_verdict(result))
    if not result.additive_only:
        raise typer.Exit(EXIT_BREAKING)


def _lint_table(report: LintReport) -> list[str]:
    width = max([len("FILE")] + [len(f.file) for f in report.files])
    lines = [f"{'FILE':<{width}}  {'KIND':<9} CHANGES"]
    for entry in report.files:
        lines.append(f"{entry.file:<{width}}  {entry.kind:<9} {len(entry.changes)}")
        if entry.error:
            lines.append(f"  error: {entry.error}")
        for change in entry.changes:
            if change.kind == "breaking":
                lines.append(f"  breaking  {change.object:<8} {change.where}  {change.detail}")
    lines.append(
        f"{len(report.files)} files: {len(report.breaking)} breaking, {len(report.errors)} failed"
    )
    return lines


@app.command("lint")
def lint_command(
    folder: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Folder of migration *.sql files.", show_default=False),
    ],
    base: Annotated[
        Path | None,
        typer.Option(
            "--base",
            metavar="BRAIN",
            help="Start from the schema of this brain (no rows are copied) instead of empty.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Apply DIR's *.sql files in name order to an in-memory schema and classify each one.

    Exit 1 when a file failed to execute (that takes precedence), else 3 when a file is
    breaking, else 0; 2 on bad input.

    \b
    Examples:
      backout schema lint migrations/
      backout schema lint migrations/ --base /data/brain.sqlite --json
    """
    try:
        report = lint(folder, base)
    except SchemaError as exc:
        _fail(str(exc))
    if as_json:
        _echo_json(report.to_dict())
    else:
        for line in _lint_table(report):
            typer.echo(line)
    if report.errors:
        raise typer.Exit(EXIT_LINT_ERROR)
    if report.breaking:
        raise typer.Exit(EXIT_BREAKING)
