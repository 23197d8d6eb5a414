"""What a person sees of the command line itself: `backout --help` without importing the commands, every
`--help` with worked examples and plain metavars (both programs, the same plain style), and usage errors
as backout's one-line sentences with exit code 2."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import typer.main

from backout import __version__
from backout.cli.main import COMMANDS, app
from backout_cli import backout

BIN = Path(sys.executable).parent
METAVAR = re.compile(r"^[A-Z][A-Z0-9_]*(=[A-Z][A-Z0-9_]*)?$")  # VERSION, ID, N, NAME=VALUE
PYTHON_TYPE = re.compile(r"<[a-z][a-z_\[\], ]*>|\b(?:INTEGER|FLOAT|BOOLEAN)\b")
COMMAND_MODULES = {entry.module for entry in COMMANDS.values()}


_RECORD_MODULES = ("import atexit, sys\n"
                   "out, sys.argv = sys.argv[1], ['backout', *sys.argv[2:]]\n"
                   "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules))))\n"
                   "from backout.cli.main import main\n"
                   "main()\n")


def _imported(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `backout ARGS` (its console-script entry point); the modules loaded when it exited."""
    record = tmp_path / "modules.txt"
    out = subprocess.run([sys.executable, "-c", _RECORD_MODULES, str(record), *args], capture_output=True,
                         text=True, timeout=60)
    return out, set(record.read_text().split("\n"))


def test_help_and_version_import_no_command_module(tmp_path: Path) -> None:
    out, modules = _imported(tmp_path, "--help")
    assert out.returncode == 0, out.stderr
    assert not modules & COMMAND_MODULES, sorted(modules & COMMAND_MODULES)
    assert not {"backout.config", "pydantic", "rich", "httpx", "sqlite3"} & modules
    for name, entry in COMMANDS.items():  # every command, with its one-line help
        assert re.search(rf"^  {name} +{re.escape(entry.short_help)}$", out.stdout, re.M), name
    version, modules = _imported(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout == f"backout {__version__}\n"
    assert not modules & COMMAND_MODULES


def test_a_command_imports_only_its_own_module(tmp_path: Path) -> None:
    out, modules = _imported(tmp_path, "status", "--help")
    assert out.returncode == 0 and out.stdout.startswith("Usage: backout status [OPTIONS]"), out.stderr
    assert modules & COMMAND_MODULES == {"backout.cli.status"}
    out, modules = _imported(tmp_path, "snapshot", "--help")
    assert out.returncode == 0 and "restore" in out.stdout
    assert modules & COMMAND_MODULES == {"backout.cli.snapshot"}


def _tree(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    if hasattr(command, "list_commands"):
        for name in command.list_commands(None):
            yield from _tree(command.get_command(None, name), (*path, name))


ROOT = typer.main.get_command(app)
TREE = dict(_tree(ROOT))


def _help(path: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return backout(*path, "--help")


def _examples(text: str) -> list[str]:
    """The command lines of a help's Examples block (continued lines joined)."""
    block = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]


def test_every_help_has_examples_and_no_python_types() -> None:
    with ThreadPoolExecutor(2) as pool:
        helps = dict(zip(TREE, pool.map(_help, TREE)))
    for path, out in helps.items():
        shown = " ".join(["backout", *path])
        assert out.returncode == 0 and out.stderr == "", (shown, out.stderr)
        text = out.stdout
        assert text.startswith(f"Usage: {shown} "), text
        assert "Examples:\n" in text, f"{shown} --help has no examples"
        lines = _examples(text)
        assert 1 <= len(lines) <= 3 and all(f"{line} ".startswith(f"{shown} ") for line in lines), (shown, lines)
        assert not PYTHON_TYPE.search(text), (shown, PYTHON_TYPE.search(text))
        assert "{" not in text.splitlines()[0], text.splitlines()[0]  # usage names arguments as VERSION, ID
        assert "╭" not in text and "│" not in text  # plain help, no rich boxes


def test_every_parameter_has_an_upper_case_metavar() -> None:
    for path, command in TREE.items():
        for param in command.params:
            if param.hidden or getattr(param, "is_flag", False) or param.name in ("help", "version"):
                continue
            assert param.metavar and METAVAR.match(param.metavar), (path, param.name, param.metavar)


def test_every_example_is_a_command_line_backout_accepts() -> None:
    for command in TREE.values():
        for line in _examples(command.help):
            words = shlex.split(line)
            assert words[0] == "backout", line
            current, name, words = ROOT, "backout", words[1:]
            while hasattr(current, "list_commands") and words and words[0] in current.list_commands(None):
                name, current, words = words[0], current.get_command(None, words[0]), words[1:]
            assert not hasattr(current, "list_commands"), f"{line}: names no command"
            current.make_context(name, words)  # raises on an unknown option, a bad value, a missing argument


ENGINE_COMMANDS = ["serve", "migrate", "releases", "eval", "traffic", "seed"]


@pytest.mark.parametrize("command", [None, *ENGINE_COMMANDS])
def test_engine_help_is_plain_with_examples(command: str | None) -> None:
    out = subprocess.run([str(BIN / "engine"), *([command] if command else []), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: engine "), out.stdout
    assert "╭" not in out.stdout and "│" not in out.stdout
    assert not PYTHON_TYPE.search(out.stdout), PYTHON_TYPE.search(out.stdout)
    lines = _examples(out.stdout)
    shown = " ".join(["engine", *([command] if command else [])])
    assert lines and all(f"{line} ".startswith(f"{shown} ") for line in lines), lines


# -- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("args, sentence", [
    (["freeze", "2.4.0"],
     "freeze needs --reason TEXT (why, kept with the freeze and in the history); see `backout freeze --help`"),
    (["snapshot", "show"],
     "snapshot show needs ID (a snapshot id, as `backout snapshot list` shows them); "
     "see `backout snapshot show --help`"),
    (["salvage", "extract", "--from", "old.sqlite"],
     "salvage extract needs --snapshot ID (the snapshot the brain was, or will be, restored to); "
     "see `backout salvage extract --help`"),
    (["snapshto"], "there is no command 'snapshto' (did you mean snapshot?); see `backout --help`"),
    (["snapshot", "lst"], "snapshot has no command 'lst' (did you mean list?); see `backout snapshot --help`"),
    (["snapshot", "create", "--lable", "x"],
     "there is no option --lable for snapshot create (did you mean --label?); see `backout snapshot create --help`"),
    (["--bogus"], "there is no option --bogus; see `backout --help`"),
    (["history", "-n", "0"], "history --limit N: must be at least 1; see `backout history --help`"),
    (["history", "--limit", "many"], "history --limit N: not a whole number; see `backout history --help`"),
    (["history", "--limit"], "history: --limit needs a value: --limit N; see `backout history --help`"),
    (["drill", "--watch", "1000"], "drill --watch SECONDS: must be at most 900; see `backout drill --help`"),
    (["snapshot", "show", "a", "b"],
     "snapshot show: unexpected extra argument(s): b; see `backout snapshot show --help`"),
])
def test_usage_errors_are_one_sentence_and_exit_2(tmp_path: Path, args: list[str], sentence: str) -> None:
    out = backout(*args, cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", f"backout: error: {sentence}\n")


# -- init --force, salvage extract's folders -----------------------------------------------------


def _init(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return backout("init", "--runtime", "process", "--brain", "brain.sqlite", "--port", "8000",
                   "--command", "engine serve --release {version} --brain {brain} --port {port}", *extra,
                   cwd=folder)


def test_init_overwrites_only_with_force(tmp_path: Path) -> None:
    assert _init(tmp_path).returncode == 0
    again = _init(tmp_path)
    assert again.returncode == 3 and "backout.toml exists; pass --force to overwrite it" in again.stderr
    assert _init(tmp_path, "--force").returncode == 0
    assert _init(tmp_path, "--yes").returncode == 0  # the old spelling still works in scripts
    shown = backout("init", "--help").stdout
    assert "--force" in shown and "--yes" not in shown and "-y," not in shown


def test_salvage_extract_names_its_two_folders(tmp_path: Path) -> None:
    brain = tmp_path / "brain.sqlite"
    conn = sqlite3.connect(brain)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('before')")
    conn.commit()
    snaps = tmp_path / "snaps"
    made = backout("snapshot", "create", "--brain", str(brain), "--into", str(snaps), "--json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    snapshot_id = re.search(r'"id": "([^"]+)"', made.stdout)[1]  # type: ignore[index]
    conn.execute("INSERT INTO notes (body) VALUES ('after')")
    conn.commit()
    conn.close()
    common = ["salvage", "extract", "--snapshot", snapshot_id, "--from", str(brain), "--brain", str(brain)]
    new = backout(*common, "--snapshot-dir", str(snaps), "--bundle-dir", str(tmp_path / "b1"), cwd=tmp_path)
    assert new.returncode == 0 and (tmp_path / "b1" / "summary.json").exists(), new.stderr
    old = backout(*common, "--into", str(snaps), "--out", str(tmp_path / "b2"), cwd=tmp_path)
    assert old.returncode == 0 and (tmp_path / "b2" / "summary.json").exists(), old.stderr
    both = backout(*common, "--snapshot-dir", str(snaps), "--into", str(tmp_path), cwd=tmp_path)
    assert (both.returncode, both.stderr) == (2, "backout: error: --into is the old name of --snapshot-dir: give "
                                                 "one of them\n")
    shown = backout("salvage", "extract", "--help").stdout
    assert "--bundle-dir DIR" in shown and "--snapshot-dir DIR" in shown
    assert "--out" not in shown and "--into" not in shown
