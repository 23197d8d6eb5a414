"""`engine`: run the reference Engine, list its releases, drive traffic and evals, seed brains."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from engine.releases import RELEASES, UnknownRelease, get_release
from engine.settings import Settings, SettingsError, key_hash_from_env

__all__ = ["app", "main"]

app = typer.Typer(
    help="The reference Engine: an AI-agent service with an SQLite brain, used to rehearse upgrades "
    "and rollbacks.\n\n"
    "\b\nExamples:\n"
    "  engine serve --release 2.3.1 --brain ./brain.sqlite --port 8000\n"
    "  engine traffic --url http://127.0.0.1:8000 --rate 5 --duration 30",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, in the same style as backout's
)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit non-zero."""
    typer.echo(f"engine: error: {message}", err=True)
    raise typer.Exit(code)


def api_key(key_file: Optional[Path]) -> str:
    """The API key for clients: from --key-file or ENGINE_API_KEY (never from a flag's value)."""
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            fail(f"cannot read key file {key_file}: {exc.strerror}")
        if not key:
            fail(f"key file {key_file} is empty")
        return key
    key = os.environ.get("ENGINE_API_KEY", "")
    if not key:
        fail("set ENGINE_API_KEY in the environment or pass --key-file PATH")
    return key


@app.command()
def serve(
    release: str = typer.Option(..., "--release", metavar="VERSION",
                                help="Version to run, e.g. 2.3.1 (see `engine releases`)."),
    brain: Optional[Path] = typer.Option(
        None, "--brain", metavar="PATH", help="Brain file (SQLite). Default: $SQLITE_DB_PATH or /data/brain.sqlite."
    ),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, metavar="PORT", help="Port to listen on."),
    turn_ms: Optional[int] = typer.Option(
        None, "--turn-ms", metavar="MS",
        help="Simulated model time per turn, 20-200 ms (default $ENGINE_TURN_MS or 50).",
    ),
    drain_timeout: Optional[float] = typer.Option(
        None, "--drain-timeout", metavar="SECONDS",
        help="Seconds to drain on SIGTERM (default $ENGINE_DRAIN_TIMEOUT or 25).",
    ),
) -> None:
    """Serve the Engine API. The key comes from ENGINE_API_KEY or ENGINE_KEY_HASH in the environment.

    \b
    Examples:
      engine serve --release 2.3.1 --brain ./brain.sqlite --port 8000
      engine serve --release 2.4.0 --brain /data/brain.sqlite --turn-ms 20 --drain-timeout 10"""
    from engine.serve import run

    env = os.environ
    try:
        settings = Settings(
            release=get_release(release),
            brain=Path(brain or env.get("SQLITE_DB_PATH") or "/data/brain.sqlite").absolute(),
            host=host,
            port=port,
            key_hash=key_hash_from_env(env),
            drain_timeout=_drain_timeout(drain_timeout, env.get("ENGINE_DRAIN_TIMEOUT")),
            turn_ms=Settings.turn_ms_from(turn_ms if turn_ms is not None else env.get("ENGINE_TURN_MS")),
            ad_key=env.get("AD_ENCRYPTION_KEY") or None,
            llm_outage_file=Path(env["ENGINE_LLM_OUTAGE_FILE"]) if env.get("ENGINE_LLM_OUTAGE_FILE") else None,
        )
        code = run(settings)
    except (UnknownRelease, SettingsError) as exc:
        fail(str(exc.args[0]))
    raise typer.Exit(code)


def _drain_timeout(flag: float | None, env_value: str | None) -> float:
    if flag is not None:
        value = flag
    else:
        try:
            value = float(env_value) if env_value else 25.0
        except ValueError:
            raise SettingsError(f"ENGINE_DRAIN_TIMEOUT must be a number of seconds, got {env_value!r}") from None
    if not 0 < value <= 600:
        raise SettingsError(f"drain timeout must be between 0 and 600 seconds, got {value}")
    return value


@app.command()
def migrate(
    release: str = typer.Option(..., "--release", metavar="VERSION", help="Release whose migrations to apply."),
    brain: Optional[Path] = typer.Option(None, "--brain", metavar="PATH",
                                         help="Brain file (default: $SQLITE_DB_PATH)."),
) -> None:
    """Apply the release's migrations to the brain and exit (what `serve` does at start-up).

    Exit 0 when the release can serve on the brain afterwards, 1 when it refuses (MIGRATION_*).

    \b
    Examples:
      engine migrate --release 2.4.0 --brain ./brain.sqlite"""
    from engine.brain import open_connection
    from engine.schema import migrate as apply_migrations
    from engine.serve import check_brain_path

    try:
        rel = get_release(release)
        path = Path(brain or os.environ.get("SQLITE_DB_PATH") or "/data/brain.sqlite").absolute()
        check_brain_path(path)
    except (UnknownRelease, SettingsError) as exc:
        fail(str(exc.args[0]))
    conn = open_connection(path)
    try:
        state = apply_migrations(conn, rel)
    finally:
        conn.close()
    typer.echo(json.dumps({"release": rel.version, "status": state.status, "head": state.head,
                           "applied": list(state.applied), "message": state.message}))
    if not state.ok:
        typer.echo(f"engine: error: {state.message} ({state.status})", err=True)
        raise typer.Exit(1)


@app.command()
def releases(
    as_json: bool = typer.Option(False, "--json", help="Print the catalogue as JSON."),
    changelog: Optional[str] = typer.Option(None, "--changelog", metavar="VERSION",
                                            help="Print one release's changelog instead."),
) -> None:
    """List the releases: version, migration head and known bug.

    \b
    Examples:
      engine releases
      engine releases --changelog 2.4.0 --json"""
    if changelog is not None:
        try:
            entry = get_release(changelog).changelog()
        except UnknownRelease as exc:
            fail(str(exc.args[0]))
        if as_json:
            typer.echo(json.dumps(entry, indent=2))
            return
        typer.echo(f"{entry['version']}: {entry['summary']}")
        for change in entry["changes"]:  # type: ignore[attr-defined]
            typer.echo(f"  - {change}")
        expected = entry["expected_changes"]
        typer.echo(f"  expected changes: {json.dumps(expected)}")
        return
    rows = [{"version": r.version, "migration_head": r.head, "bug": r.bug, "summary": r.summary}
            for r in RELEASES.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'VERSION':<16}{'HEAD':>5}  {'BUG':<8} SUMMARY")
    for row in rows:
        typer.echo(f"{row['version']:<16}{row['migration_head']:>5}  {row['bug']:<8} {row['summary']}")


@app.command("eval")
def eval_(
    url: str = typer.Option(..., "--url", metavar="URL", help="Base URL of the Engine, e.g. http://127.0.0.1:8000."),
    junit: Optional[Path] = typer.Option(None, "--junit", metavar="FILE", help="Write JUnit XML results here."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Write JSON results here."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", metavar="FILE",
                                            help="Read the API key from this file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the summary line."),
    cases_dir: list[Path] | None = typer.Option(
        None, "--cases-dir", metavar="DIR",
        help="Also run every *.json regression case in DIR (e.g. written by a backout rollback); repeatable."),
) -> None:
    """Run the regression eval suite against a running Engine; exit 1 when a case fails.

    \b
    Examples:
      engine eval --url http://127.0.0.1:8000 --junit evals.xml
      engine eval --url http://127.0.0.1:8000 --cases-dir .backout/incidents/20261204T143012Z-2.4.0/regression"""
    from engine.evals import load_regression_cases, run_suite, write_json, write_junit

    key = api_key(key_file)
    try:
        extra = load_regression_cases(cases_dir or [])
    except NotADirectoryError as exc:
        fail(str(exc))
    try:
        result = run_suite(url, key, extra=extra)
    except OSError as exc:
        fail(f"cannot reach the Engine at {url}: {exc}")
    for case in result.cases:
        if not quiet or not case.passed:
            mark = "PASS" if case.passed else "FAIL"
            typer.echo(f"{mark} {case.name}" + ("" if case.passed else f": {case.detail}"))
    if junit:
        write_junit(result, junit)
    if json_out:
        write_json(result, json_out)
    typer.echo(f"{result.passed}/{len(result.cases)} cases passed against {result.version or url}")
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def traffic(
    url: str = typer.Option(..., "--url", metavar="URL", help="Base URL of the Engine."),
    rate: float = typer.Option(5.0, "--rate", min=0.1, max=500, metavar="N", help="Turns per second."),
    duration: float = typer.Option(10.0, "--duration", min=0.1, metavar="SECONDS", help="Seconds to run."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Random seed for the message mix."),
    poison_every: int = typer.Option(0, "--poison-every", min=0, metavar="N",
                                     help="Every Nth turn goes to the poisoned task (0: never)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", metavar="FILE",
                                            help="Read the API key from this file."),
    progress_every: float = typer.Option(10.0, "--progress-every", min=0, metavar="SECONDS",
                                         help="Without a terminal, a progress line on stderr this often (0: none); "
                                         "on a terminal a progress bar shows instead."),
) -> None:
    """Send realistic traffic (people, facts, feedback, MCP asks) and print a summary.

    Progress goes to stderr while it runs. Ctrl-C stops it early: the turns in flight finish (for
    at most 5 s), the summary so far is printed, exit 130. Exit 1 when no turn could be sent, or
    when every answer was 401/403 (the key is not the Engine's).

    \b
    Examples:
      engine traffic --url http://127.0.0.1:8000 --rate 5 --duration 30
      engine traffic --url http://127.0.0.1:8000 --rate 8 --duration 600 --key-file key.txt --json"""
    import signal
    import threading

    from engine.traffic import TrafficPlan, TrafficProgress, run_traffic

    key = api_key(key_file)
    plan = TrafficPlan(url=url, key=key, rate=rate, duration=duration, seed=seed, poison_every=poison_every)
    stop = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for the turns in flight
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with TrafficProgress(plan, progress_every) as progress:
            summary = run_traffic(plan, progress.on_result, stop, grace=5.0)
    except KeyboardInterrupt:
        fail("interrupted twice: stopped without waiting for the turns in flight, so there is no summary", 130)
    finally:
        signal.signal(signal.SIGINT, previous)
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        typer.echo(summary.render())
    if stop.is_set():
        typer.echo(f"engine: interrupted: the summary covers the {summary.attempted} turns sent before Ctrl-C",
                   err=True)
        raise typer.Exit(130)
    if summary.sent == 0:
        fail(f"no turn could be sent to {url}", code=1)
    if summary.refused_by_key():
        source = f"the key in {key_file}" if key_file is not None else "ENGINE_API_KEY"
        codes = "/".join(str(c) for c in sorted(s for s in summary.by_status if s > 0))
        fail(f"the Engine at {url} refused every turn ({codes}): it does not accept {source}; set ENGINE_API_KEY "
             "(or --key-file FILE) to the key the Engine was started with (its ENGINE_API_KEY, or the key whose "
             "sha256 is its ENGINE_KEY_HASH)", code=1)


@app.command()
def seed(
    brain: Path = typer.Option(..., "--brain", metavar="PATH", help="Brain file to create or grow."),
    size: str = typer.Option("50MB", "--size", metavar="SIZE", help="Target size, e.g. 500MB or 2GB."),
    release: str = typer.Option("2.3.1", "--release", metavar="VERSION",
                                help="Release whose migrations build the schema."),
    rng_seed: int = typer.Option(0, "--seed", metavar="N", help="Random seed."),
) -> None:
    """Build a realistic large brain quickly, through the release's own migrations.

    \b
    Examples:
      engine seed --brain big.sqlite --size 500MB
      engine seed --brain big.sqlite --size 2GB --release 2.4.0 --seed 7"""
    from engine.seed import parse_size, seed_brain
    from engine.serve import check_brain_path

    try:
        target = parse_size(size)
        rel = get_release(release)
        check_brain_path(brain.absolute())
        result = seed_brain(brain, target, rel, rng_seed)
    except (UnknownRelease, SettingsError, ValueError) as exc:
        fail(str(exc.args[0]))
    typer.echo(json.dumps(result))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="engine")


if __name__ == "__main__":
    sys.exit(main())
