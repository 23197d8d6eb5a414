"""What a person sees when backout.toml is wrong: the file, the line, the key as written in TOML, what is
wrong in plain words and what to do, exit 2, and nothing changed. Each case runs the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest

from backout.config import ConfigError, load_config, parse_duration
from backout_cli import backout

BASE = """\
state_dir = ".backout"

# the reference Engine
[deployments.engine]
brain = "brain.sqlite"
health_url = "http://127.0.0.1:8000/health"
"""

# Words of the validation library that must never reach a person.
LIBRARY_WORDS = ["Value error,", "Extra inputs are not permitted", "Input should be", "Field required",
                 "problem(s)", "validation error", "pydantic", "Traceback", "literal_error", "type=", "[type"]


def _status(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`backout status ARGS` (default: --config backout.toml) in `folder`: it must fail with exit 2, one
    clear message, and leave the folder as it was."""
    before = sorted(p.name for p in folder.iterdir())
    out = backout("status", *(args or ("--config", "backout.toml")), cwd=folder)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr.startswith("backout: error: "), out.stderr
    for words in LIBRARY_WORDS:
        assert words not in out.stderr, out.stderr
    assert sorted(p.name for p in folder.iterdir()) == before, "a config error changed the folder"
    return out


def _error(folder: Path, text: str | bytes) -> str:
    """The error message (without `backout: error: `) for a backout.toml holding `text`."""
    path = folder / "backout.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return _status(folder).stderr.removeprefix("backout: error: ").rstrip("\n")


# -- the defects as reported ---------------------------------------------------------------------------

def test_an_unknown_key_names_file_line_key_and_the_nearest_valid_key(tmp_path: Path) -> None:
    text = BASE.replace("health_url", "health_ur")
    assert _error(tmp_path, text) == ("backout.toml:6: deployments.engine.health_ur: unknown key; "
                                      "did you mean health_url?")


def test_durations_as_an_operator_writes_them(tmp_path: Path) -> None:
    (tmp_path / "backout.toml").write_text(BASE + '\n[deployments.engine.snapshots]\nmax_age = "24 hours"\n')
    out = backout("status", "--json", "--config", "backout.toml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert load_config(tmp_path / "backout.toml").deployments["engine"].snapshots.max_age == timedelta(hours=24)


def test_a_duration_that_is_not_one_lists_the_accepted_forms(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE + '\n[deployments.engine.snapshots]\nmax_age = "24 hourz"\n')
    assert message == ("backout.toml:9: deployments.engine.snapshots.max_age: '24 hourz' is not a duration; "
                       "write a number and a unit: 90s, 15m, 24h, 7d, 2w (or 90 seconds, 15 minutes, 24 hours, "
                       "7 days, 2 weeks)")


def test_an_absurd_duration_is_refused_with_a_sentence(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE + 'snapshots = { max_age = "99999999999w" }\n')
    assert message == ("backout.toml:7: deployments.engine.snapshots.max_age: '99999999999w' is too long for a "
                       "duration; the longest accepted is 3650d (ten years)")


def test_a_config_that_is_not_utf8(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE.encode() + b'# caf\xe9 au lait\n')
    assert message == ("backout.toml:7: the file is not UTF-8 text (byte 0xe9 at column 6); "
                       "save it as UTF-8, as TOML requires")


# -- the file itself -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, said", [
    ("[deployments.engine\nbrain = 'b'\n",
     "backout.toml:1: not valid TOML at column 20: a table header is not closed with ']'"),
    ('[deployments.engine]\nhealth_url = http://127.0.0.1:8000/health\n',
     "backout.toml:2: not valid TOML at column 14: the value is not TOML; text needs quotes"),
    ('[deployments.engine]\nbrain = "a"\nbrain = "b"\n',
     "backout.toml:3: not valid TOML at column 12: a key is set twice"),
    ('[deployments.engine]\nbrain = "a"\n[deployments.engine]\n',
     "backout.toml:3: not valid TOML at column 20: the table [deployments.engine] is declared twice"),
    ('[deployments.engine]\nbrain = "a\n',
     "backout.toml:2: not valid TOML at column 11: a string is not closed with its quote"),
    ('[deployments.engine]\nfrozen = ["2.3.1",\n',
     "backout.toml:2: not valid TOML at the end of the file: the file ends inside a value; is a ']', '}' or a "
     "quote missing?"),
])
def test_a_config_that_is_not_toml_says_where_in_our_words(tmp_path: Path, text: str, said: str) -> None:
    message = _error(tmp_path, text)
    assert message.startswith(said), message
    assert message.endswith("; fix it and run the command again"), message
    assert "(at line" not in message


def test_a_config_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    out = _status(tmp_path, "--config", "conf")
    assert out.stderr == ("backout: error: config file conf is a folder; name the file in it, "
                          "e.g. --config conf/backout.toml\n")


def test_a_config_named_with_config_that_does_not_exist(tmp_path: Path) -> None:
    out = _status(tmp_path, "--config", "nope.toml")
    assert out.stderr == ("backout: error: config file nope.toml does not exist; check the path, "
                          "or write one with `backout init`\n")


def test_a_config_that_cannot_be_read() -> None:
    # Not under pytest's tmp_path: as root the command runs as nobody, who must reach the file's folder.
    folder = Path(tempfile.mkdtemp(prefix="backout-unreadable-"))
    try:
        folder.chmod(0o777)
        config = folder / "backout.toml"
        config.write_text(BASE)
        config.chmod(0o000)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKOUT_")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        out = subprocess.run([*as_nobody, sys.executable, "-m", "backout", "status", "--config", str(config)],
                             capture_output=True, text=True, cwd=folder, env=env, timeout=60)
        assert out.returncode == 2, out.stderr
        assert out.stderr == (f"backout: error: cannot read config file {config}: permission denied; give this "
                              "user read access to it (or run as a user who has it)\n")
        assert sorted(p.name for p in folder.iterdir()) == ["backout.toml"]
    finally:
        config.chmod(0o600)
        config.unlink()
        folder.rmdir()


# -- each kind of mistake, in sentences ----------------------------------------------------------------

@pytest.mark.parametrize("extra, said", [
    # a key in the wrong table
    ("keep_last = 3\n",
     "backout.toml:7: deployments.engine.keep_last: unknown key here; it belongs in "
     "[deployments.engine.snapshots]"),
    # nothing close: the keys of that table
    ("[deployments.engine.snapshots]\ncolour = 3\n",
     "backout.toml:9: deployments.engine.snapshots.colour: unknown key; the keys of "
     "[deployments.engine.snapshots] are dir, keep_last, max_age"),
    ("[deployments.engine.snapshot]\nkeep_last = 3\n",
     "backout.toml:8: deployments.engine.snapshot: unknown key; did you mean snapshots?"),
    ('runtime = "proces"\n',
     "backout.toml:7: deployments.engine.runtime: 'proces' is not one of 'process', 'compose'; "
     "did you mean 'process'?"),
    ('staging = "maybe"\n',
     "backout.toml:7: deployments.engine.staging: 'maybe' is not true or false; write staging = true "
     "or staging = false (without quotes)"),
    ('snapshots = { keep_last = "ten" }\n',
     "backout.toml:7: deployments.engine.snapshots.keep_last: 'ten' is not a whole number; write it "
     "without quotes, e.g. keep_last = 10"),
    ('snapshots = { keep_last = 0 }\n',
     "backout.toml:7: deployments.engine.snapshots.keep_last: must be at least 1 (it is 0)"),
    ('[deployments.engine.verdict]\nalpha = 1.5\n',
     "backout.toml:9: deployments.engine.verdict.alpha: must be less than 1 (it is 1.5)"),
    ('[deployments.engine.verdict]\nalpha = 0\n',
     "backout.toml:9: deployments.engine.verdict.alpha: must be more than 0 (it is 0)"),
    ('[deployments.engine.verdict]\nerror_floor = "high"\n',
     "backout.toml:9: deployments.engine.verdict.error_floor: 'high' is not a number; write it "
     "without quotes, e.g. error_floor = 0.02"),
    ('[deployments.engine.process]\ncommand = "serve"\nport = 70000\n',
     "backout.toml:10: deployments.engine.process.port: must be at most 65535 (it is 70000)"),
    ("changelog_command = 8000\n",
     "backout.toml:7: deployments.engine.changelog_command: 8000 is not text; put it in quotes"),
    ('frozen = "2.3.1"\n',
     "backout.toml:7: deployments.engine.frozen: '2.3.1' is not a list; write it in brackets, "
     "e.g. frozen = [\"2.3.1\"]"),
    ("snapshots = 5\n",
     "backout.toml:7: deployments.engine.snapshots: 5 is not a table; write [deployments.engine.snapshots] "
     "with its keys below it, or snapshots = { ... }"),
    ('[deployments.engine.process]\nport = 8000\n',
     "backout.toml:8: deployments.engine.process.command: required key missing; add command = ... to "
     "[deployments.engine.process]"),
    # our own validators keep their message, without the library's prefix
    ('runtime = "process"\n',
     "backout.toml:4: deployments.engine: runtime = 'process' needs a [deployments.NAME.process] table "
     "with `command`"),
    ('api_key_header = "X-Key"\n',
     "backout.toml:7: deployments.engine.api_key_header: `api_key_header` moved to the service profile: "
     "write profile.api_key_header"),
    ('api_key = { env = "A", file = "b" }\n',
     "backout.toml:7: deployments.engine.api_key: give exactly one of `env` (a variable name) or `file` "
     "(a path) for a secret"),
    # the profile's own keys: suggested at their place too
    ('profile = { request_pth = "/x" }\n',
     "backout.toml:7: deployments.engine.profile.request_pth: unknown key; did you mean request_path?"),
    ('[deployments.engine.profile.health]\nstatus_fild = "state"\n',
     "backout.toml:9: deployments.engine.profile.health.status_fild: unknown key; did you mean status_field?"),
    ('[[deployments.engine.profile.smoke]]\npath = "/a"\n[[deployments.engine.profile.smoke]]\npth = "/b"\n',
     "backout.toml:11: deployments.engine.profile.smoke[1].pth: unknown key; did you mean path?"),
    # a value that fits none of the types a key takes: one error at the key
    ('[[deployments.engine.profile.smoke]]\npath = "/a"\nbody = 5\n',
     "backout.toml:10: deployments.engine.profile.smoke[0].body: 5 is not a table or a list"),
    ('profile = "rails"\n',
     "backout.toml:7: deployments.engine.profile: unknown service profile 'rails'; known: engine, alembic"),
    ('[deployments."../x"]\nbrain = "b"\n',
     "backout.toml:8: deployments.\"../x\": deployment name '../x' is refused"),
    ('timeout = "5m"\n',
     "backout.toml:7: deployments.engine.timeout: unknown key here; it belongs in [deployments.engine.evals] "
     "or [deployments.engine.notify] or [deployments.engine.volume]"),
])
def test_each_mistake_in_plain_words(tmp_path: Path, extra: str, said: str) -> None:
    message = _error(tmp_path, BASE + "\n" + extra if extra.startswith("[") else BASE + extra)
    assert message.startswith(said), message


def test_an_unknown_table_at_the_top_points_to_deployments(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE + "\n[engine.snapshots]\nkeep_last = 3\n")
    assert message == ("backout.toml:8: engine: unknown key; a deployment's settings go under "
                       "[deployments.engine] (the keys at the top are state_dir, deployments)")


def test_no_deployments(tmp_path: Path) -> None:
    assert _error(tmp_path, 'state_dir = ".backout"\n') == (
        "backout.toml: no deployments; add a [deployments.NAME] table with brain = \"PATH\", or write one "
        "with `backout init`")
    assert _error(tmp_path, "deployments = {}\n").startswith("backout.toml:1: no deployments; ")


def test_several_problems_are_listed_each_with_its_line_then_counted(tmp_path: Path) -> None:
    text = BASE.replace("health_url", "health_ur") + (
        '\n[deployments.engine.snapshots]\nmax_age = "forever"\nkeep_last = 0\n')
    assert _error(tmp_path, text) == "\n".join([
        "backout.toml has problems:",
        "  backout.toml:6: deployments.engine.health_ur: unknown key; did you mean health_url?",
        "  backout.toml:9: deployments.engine.snapshots.max_age: 'forever' is not a duration; write a number "
        "and a unit: 90s, 15m, 24h, 7d, 2w (or 90 seconds, 15 minutes, 24 hours, 7 days, 2 weeks)",
        "  backout.toml:10: deployments.engine.snapshots.keep_last: must be at least 1 (it is 0)",
        "3 problems in all; fix them and run the command again",
    ])


def test_many_problems_are_cut_after_ten(tmp_path: Path) -> None:
    text = BASE + "".join(f"unknown_{i} = 1\n" for i in range(14))
    lines = _error(tmp_path, text).splitlines()
    assert lines[0] == "backout.toml has problems:"
    assert lines[1].startswith("  backout.toml:7: deployments.engine.unknown_0: unknown key; ")
    assert lines[10].startswith("  backout.toml:16: deployments.engine.unknown_9: unknown key; ")
    assert lines[11:] == ["  ... and 4 more", "14 problems in all; fix them and run the command again"]


def test_a_deployment_name_with_a_dot_is_quoted_as_in_toml(tmp_path: Path) -> None:
    text = BASE.replace("[deployments.engine]", '[deployments."engine.eu"]').replace("health_url", "health_ur")
    assert _error(tmp_path, text) == ('backout.toml:6: deployments."engine.eu".health_ur: unknown key; '
                                      "did you mean health_url?")


def test_the_library_call_raises_config_error_with_the_same_words(tmp_path: Path) -> None:
    path = tmp_path / "backout.toml"
    path.write_text(BASE.replace("health_url", "health_ur"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (f"{path}:6: deployments.engine.health_ur: unknown key; "
                                 "did you mean health_url?")


# -- durations -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("2m", 120), ("24h", 86400), ("1d", 86400), ("1w", 604800), ("1.5h", 5400),
    ("90 seconds", 90), ("1 second", 1), ("2 minutes", 120), ("2 min", 120), ("24 hours", 86400),
    ("1 hour", 3600), ("1 day", 86400), ("7 days", 604800), ("2 weeks", 1209600), ("10 SECONDS", 10),
    ("1h30m", 5400), ("1h 30m", 5400), ("1 hour 30 minutes", 5400), (" 15m ", 900), ("0s", 0),
    (30, 30), (2.5, 2.5), ("3650d", 3650 * 86400),
])
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text, said", [
    ("24 hourz", "'24 hourz' is not a duration; write a number and a unit: 90s, 15m"),
    ("forever", "'forever' is not a duration"),
    ("", "'' is not a duration"),
    ("90", "'90' is not a duration"),
    ("1 month", "'1 month' is not a duration"),
    ("-5m", "'-5m' is not a duration"),
    ("1h1h", "'1h1h' is not a duration"),
    ("99999999999w", "'99999999999w' is too long for a duration; the longest accepted is 3650d (ten years)"),
    ("3651d", "'3651d' is too long for a duration"),
    ("1" * 400 + "s", "is too long for a duration"),
    (10**30, "is too long for a duration"),
    (-1, "-1 is not a duration; it cannot be negative"),
    (float("nan"), "nan is not a duration"),
    (float("inf"), "is too long for a duration"),
    (True, "True is not a duration"),
])
def test_parse_duration_refuses_with_a_sentence(text: object, said: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert said in str(caught.value)
    assert not isinstance(caught.value, OverflowError)


# -- the line locator ----------------------------------------------------------------------------------

LOCATOR_SAMPLE = '''\
# a comment with [brackets] and key = "value"
state_dir = ".backout"   # trailing comment

[deployments.engine]
brain = "brain.sqlite"
snapshots.keep_last = 3
"quoted.key" = 1
snapshots = { max_age = "1h" } # not valid TOML together with the dotted key above, but locatable
command = """
[not.a.header]
fake = 1
"""
args = [
  "[still.not]",
  'x = 1',
]
  [ deployments . "my app" ]
  brain = 'b'   # indented
literal = \'\'\'
[nope]
\'\'\'

[[deployments.engine.profile.smoke]]
path = "/a"
[[deployments.engine.profile.smoke]]
path = "/b"
[deployments.engine.profile.smoke.body]
text = "x"
[[deployments.engine.profile.smoke]]
path = "/c"
'''


def test_key_lines_finds_headers_dotted_keys_and_array_tables() -> None:
    from backout.config_errors import key_lines

    lines = key_lines(LOCATOR_SAMPLE)
    assert lines[("state_dir",)] == 2
    assert lines[("deployments",)] == 4  # implied by the first header under it
    assert lines[("deployments", "engine")] == 4
    assert lines[("deployments", "engine", "brain")] == 5
    assert lines[("deployments", "engine", "snapshots")] == 6
    assert lines[("deployments", "engine", "snapshots", "keep_last")] == 6
    assert lines[("deployments", "engine", "quoted.key")] == 7
    assert lines[("deployments", "engine", "command")] == 9
    assert lines[("deployments", "engine", "args")] == 13
    assert ("not", "a", "header") not in lines and ("deployments", "engine", "fake") not in lines
    assert ("still.not",) not in lines and ("deployments", "engine", "x") not in lines
    assert lines[("deployments", "my app")] == 17
    assert lines[("deployments", "my app", "brain")] == 18
    assert lines[("deployments", "my app", "literal")] == 19
    assert ("nope",) not in lines
    assert lines[("deployments", "engine", "profile", "smoke")] == 23
    assert lines[("deployments", "engine", "profile", "smoke", 0)] == 23
    assert lines[("deployments", "engine", "profile", "smoke", 0, "path")] == 24
    assert lines[("deployments", "engine", "profile", "smoke", 1, "path")] == 26
    assert lines[("deployments", "engine", "profile", "smoke", 1, "body")] == 27
    assert lines[("deployments", "engine", "profile", "smoke", 1, "body", "text")] == 28
    assert lines[("deployments", "engine", "profile", "smoke", 2, "path")] == 30


def test_key_lines_with_windows_line_ends_and_escaped_quotes() -> None:
    from backout.config_errors import key_lines

    text = '[a]\r\nb = "say \\"[x]\\" = 1"\r\nc = 2\r\n[a.d]\r\ne = 3\r\n'
    assert key_lines(text) == {("a",): 1, ("a", "b"): 2, ("a", "c"): 3, ("a", "d"): 4, ("a", "d", "e"): 5}


def test_the_readme_shows_what_a_person_sees(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("```toml", 1)[1].split("```", 1)[0].lstrip("\n")
    shown = readme.split("$ backout status\n", 1)[1].split("```", 1)[0]
    wrong = example.replace("health_url =", "health_ur =").replace('max_age = "24h"', 'max_age = "a day"')
    assert wrong.count("health_ur =") == 1 and 'max_age = "a day"' in wrong
    (tmp_path / "backout.toml").write_text(wrong)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = backout("status", cwd=tmp_path)  # ./backout.toml, as the README runs it
    assert (out.returncode, out.stderr) == (2, shown)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
