"""The third-party acceptance suite: real services backout did not write, upgraded and rolled back
through the backout CLI exactly as an operator would.

For every pair (OLD -> NEW) below:

1. OLD's database is put in place: OLD runs once by itself on a new file (so its migration ledger
   exists) and one record is written; `backout init` is run with the service's own command,
   check, migrate step and config file, and must report the profile the ledger implies;
2. `backout switch OLD`, then records written through the service's own API;
3. `backout upgrade NEW --watch 10s` (NEW is healthy, so it is promoted), then more records: the
   bad window;
4. `backout rollback --dry-run` (the plan: a trial boot of OLD on a copy of the brain), then
   `backout rollback --json`: the layer must be the one the pair calls for (image when OLD still
   serves NEW's database, image + brain when it does not), every record written before the
   upgrade must be there afterwards (through the API and in the database), the bad window's
   records must be in the salvage bundle (brain) or still in the database (image), and OLD must
   be running, healthy and answering its API;
5. `backout stop`, always; no process of the test may outlive it.

Services (tests/thirdparty/envs.py, FINDINGS.md): isso 0.13.0 -> 0.14.0 (PRAGMA user_version,
migrates at boot, OLD keeps serving: image; until a smoke request proves that OLD still writes the
rebuilt `comments` table the plan restores the brain and says so, and the operator adds one between
the dry run and the rollback), JupyterHub 4.1.6 -> 5.4.6 (alembic, separate `jupyterhub upgrade-db`,
OLD exits on the migrated database: brain). Apps (tests/thirdparty/apps): Django 2.0 -> 3.0 (OLD
boots but cannot insert: brain, seen only by a writing smoke request), Django 1.0 -> 2.0 (additive:
image), Flask + alembic 1.0 -> 2.0 (OLD refuses at boot: brain).

Everything runs on 127.0.0.1; commands are argv lists; the JupyterHub token reaches the service
only through the environment (`pass_env`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

import envs
from apps import catalog, try_apps

pytestmark = [pytest.mark.thirdparty, pytest.mark.slow, pytest.mark.timeout(900)]

WATCH = "10s"
BOOT_TIMEOUT = 120.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


# --------------------------------------------------------------------------------------------------
# Plumbing: HTTP, ports, processes, the database
# --------------------------------------------------------------------------------------------------

def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 20.0) -> tuple[int | None, str]:
    """(status, text) of one request; status None when nothing answered."""
    assert url.startswith("http://127.0.0.1:"), url
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None, ""


def command_line(tokens: list[str] | tuple[str, ...]) -> str:
    """A command template as an operator types it: quoted only where a shell would need it (braces are fine)."""
    return " ".join(t if t and re.fullmatch(r"[\w@%+=:,./{}-]+", t) else shlex.quote(t) for t in tokens)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def db_values(brain: Path, table: str, column: str) -> list[str]:
    """Every value of `column` in `table`, read-only (the service may be running)."""
    conn = sqlite3.connect(f"file:{brain}?mode=ro", uri=True, timeout=10)
    try:
        return [str(row[0]) for row in conn.execute(f'SELECT "{column}" FROM "{table}"')]
    finally:
        conn.close()


def processes_mentioning(text: str) -> dict[int, str]:
    """{pid: command line} of every live process whose command line contains `text` (zombies excluded)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found[int(entry.name)] = cmdline.strip()
    return found


class Direct:
    """One service process started by the test itself (not by backout), in its own session."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.argv, self.env, self.cwd, self.log = argv, env, cwd, log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Direct":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_healthy(self, url: str, timeout: float = BOOT_TIMEOUT) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            status, _ = http("GET", url, timeout=5)
            if status == 200:
                return
            time.sleep(0.3)
        tail = self.log.read_text(errors="replace").splitlines()[-15:]
        raise AssertionError(f"{shlex.join(self.argv)} did not become healthy at {url} "
                             f"(exit {self.proc.poll()}); last lines:\n" + "\n".join(tail))

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --------------------------------------------------------------------------------------------------
# The operator: the backout CLI as a subprocess, every call kept in a transcript
# --------------------------------------------------------------------------------------------------

class Operator:
    def __init__(self, folder: Path, secrets_env: dict[str, str]) -> None:
        self.folder = folder
        self.config = folder / "backout.toml"
        self.transcript = folder / "transcript.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BACKOUT_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                             "DJANGO_SETTINGS_MODULE")}
        env["TZ"] = "UTC"  # passed on to the services: log lines without a zone are read as UTC
        env.update(secrets_env)
        self.env = env
        self.timings: dict[str, float] = {}

    def run(self, *args: str, config: bool = True, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "backout", *args] + (["--config", str(self.config)] if config else [])
        started = time.monotonic()
        out = subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=self.folder,
                             stdin=subprocess.DEVNULL, timeout=timeout)
        seconds = time.monotonic() - started
        self.timings[args[0] + (" --dry-run" if "--dry-run" in args else "")] = round(seconds, 1)
        with self.transcript.open("a") as log:
            log.write(f"\n$ backout {shlex.join(args)}   # exit {out.returncode} after {seconds:.1f}s\n"
                      f"--- stdout\n{out.stdout}--- stderr\n{out.stderr}")
        return out

    def ok(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        out = self.run(*args, **kwargs)
        assert out.returncode == 0, self.explain(out, f"backout {' '.join(args)} exited {out.returncode}")
        return out

    def json(self, *args: str, **kwargs: Any) -> Any:
        out = self.ok(*args, "--json", **kwargs)
        try:
            return json.loads(out.stdout)
        except ValueError:
            raise AssertionError(self.explain(out, "not JSON")) from None

    def service_log(self, deployment: str) -> list[str]:
        log = self.folder / ".backout" / "deployments" / deployment / "runtime" / "service.log"
        return log.read_text(errors="replace").splitlines() if log.exists() else []

    def explain(self, out: subprocess.CompletedProcess[str] | None, what: str, deployment: str = "") -> str:
        parts = [what]
        if out is not None:
            parts += [f"stdout (tail):\n{out.stdout[-4000:]}", f"stderr (tail):\n{out.stderr[-4000:]}"]
        for name in [deployment] if deployment else []:
            parts.append("service log (tail):\n" + "\n".join(self.service_log(name)[-25:]))
        parts.append(f"transcript: {self.transcript}")
        return "\n".join(parts)


def with_profile_table(toml: str, deployment: str, profile: str, smoke: str) -> str:
    """`toml` with its one-line `profile = "..."` replaced by a [deployments.NAME.profile] table naming the same
    profile, followed by `smoke` (its [[deployments.NAME.profile.smoke]] entries), as docs/services.md shows."""
    line = re.search(rf'^profile = "{profile}".*$', toml, flags=re.MULTILINE)
    assert line, toml
    table = f'[deployments.{deployment}.profile]\nname = "{profile}"\n\n{smoke.strip()}\n'
    return toml[:line.start()].rstrip("\n") + "\n" + toml[line.end():].lstrip("\n") + "\n" + table


def json_lines(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


# --------------------------------------------------------------------------------------------------
# The services, each driven through its own API
# --------------------------------------------------------------------------------------------------

@dataclass
class Service:
    """One upgrade pair as the test drives it; subclasses know the service's API and files."""

    key: str  # deployment name and test id
    old: str
    new: str
    layer: str  # the rollback layer this pair calls for
    profile: str  # what `backout init` detects from OLD's database
    table: str  # where the records live
    column: str  # the column that holds a record's value (in OLD's schema)
    health_path: str
    planned: str = ""  # the layer `rollback --dry-run` shows before `revise` (default: `layer`)
    refusal: str = ""  # a regular expression for the line OLD prints when it refuses NEW's database
    reason: str = ""  # what the rollback's layer reason must say (the evidence the layer was chosen on)
    logs_requests: bool = False  # its log has a line per request with a sub-second time: the baseline counts them
    folder: Path = field(default=Path("."))
    brain: Path = field(default=Path("."))
    port: int = 0

    # -- overridden ---------------------------------------------------------------------------------

    def init_args(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """OLD by itself on a new database; one record ("seed") written; stopped."""
        raise NotImplementedError

    def write(self, name: str, port: int | None = None) -> None:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        """The record is visible through the service's API."""
        raise NotImplementedError

    def version(self) -> str | None:
        raise NotImplementedError

    def value(self, name: str) -> str:
        return name

    def secrets_env(self) -> dict[str, str]:
        return {}

    def customize(self, toml: str) -> str:
        """What the operator adds to the written backout.toml (profile overrides)."""
        return toml

    def revise(self, toml: str) -> str:
        """What the operator changes after reading the rollback's plan (--dry-run), before rolling back."""
        return toml

    # -- shared -------------------------------------------------------------------------------------

    def url(self, path: str = "", port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}{path}"

    def health_url(self) -> str:
        return self.url(self.health_path)

    def stored(self) -> list[str]:
        return db_values(self.brain, self.table, self.column)


@dataclass
class Isso(Service):
    spec: envs.ServiceSpec = envs.ISSO

    def _cmd(self, tokens: tuple[str, ...]) -> str:
        venv = str(envs.cache_dir() / self.spec.name) + "/{version}"
        config = "{config}/" + (self.spec.config_name or "")  # rendered by backout: --config-file
        return command_line([t.format(venv=venv, config=config) for t in tokens])

    def init_args(self) -> list[str]:
        template = self.folder / "isso.cfg.tmpl"
        assert self.spec.config_template and "{{" not in self.spec.config_template
        template.write_text(self.spec.config_template)  # {brain} {port}: backout's placeholders too
        venv = str(envs.cache_dir() / self.spec.name) + "/{version}"
        return ["--command", self._cmd(self.spec.start), "--check", f"{venv}/bin/isso --version",
                "--config-file", f"{template}={self.spec.config_name}"]

    def prepare(self) -> None:
        port, state = free_port(), self.folder / "direct-old"
        self.spec.write_config(self.old, brain=self.brain, port=port, state=state)
        argv = self.spec.argv(self.old, brain=self.brain, port=port, state=state)
        env = self.spec.environ(self.old, brain=self.brain, port=port, state=state)
        with Direct(argv, env, self.folder, self.folder / "direct-old.log") as proc:
            proc.wait_healthy(self.url(self.health_path, port))
            self.write("seed", port)

    def write(self, name: str, port: int | None = None) -> None:
        method, path, body, headers = self.spec.write.render(name)
        status, text = http(method, self.url(path, port), body, headers)
        assert status == 201 and f"comment {name}" in text, (status, text[:300])

    def has(self, name: str) -> bool:
        method, path, body, headers = self.spec.read.render(name)
        status, text = http(method, self.url(path), body, headers)
        return status == 200 and f"comment {name}" in text  # one thread per record name

    def version(self) -> str | None:
        status, text = http("GET", self.url("/info"))
        return json.loads(text).get("version") if status == 200 else None

    def value(self, name: str) -> str:
        return f"comment {name}"

    def revise(self, toml: str) -> str:
        # 0.14.0 rebuilt `comments` with `text NOT NULL`: the plan restores the brain unless a smoke request
        # proves that 0.13.0 still writes comments; its reason says so, and the operator adds one.
        return with_profile_table(toml, self.key, self.profile, f"""
[[deployments.{self.key}.profile.smoke]]
method = "POST"
path = "/new?uri=%2Fbackout%2Ftrial"
body = {{ text = "backout trial", author = "backout", title = "backout trial" }}
expect_status = [201]
tables = ["comments", "threads"]

[[deployments.{self.key}.profile.smoke]]
path = "/?uri=%2Fbackout%2Ftrial"
json_path = "replies.0.text"
tables = ["comments"]
""")


@dataclass
class Hub(Service):
    spec: envs.ServiceSpec = envs.JUPYTERHUB
    token: str = field(default_factory=lambda: secrets.token_hex(24))

    def _cmd(self, tokens: tuple[str, ...]) -> str:
        venv = str(envs.cache_dir() / self.spec.name) + "/{version}"
        return command_line([t.format(venv=venv, brain="{brain}", port="{port}") for t in tokens])

    def init_args(self) -> list[str]:
        assert self.spec.migrate is not None and self.spec.token_env
        venv = str(envs.cache_dir() / self.spec.name) + "/{version}"
        return ["--command", self._cmd(self.spec.start), "--migrate", self._cmd(self.spec.migrate),
                "--check", f"{venv}/bin/jupyterhub --version", "--pass-env", self.spec.token_env]

    def secrets_env(self) -> dict[str, str]:
        assert self.spec.token_env
        return {self.spec.token_env: self.token}

    def prepare(self) -> None:
        port, state = free_port(), self.folder / "direct-old"
        argv = self.spec.argv(self.old, brain=self.brain, port=port, state=state)
        env = self.spec.environ(self.old, brain=self.brain, port=port, state=state, token=self.token)
        with Direct(argv, env, self.folder, self.folder / "direct-old.log") as proc:
            proc.wait_healthy(self.url(self.health_path, port))
            self.write("seed", port)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def write(self, name: str, port: int | None = None) -> None:
        status, text = http("POST", self.url(f"/hub/api/users/{name}", port), b"", self._auth())
        assert status == 201 and f'"name": "{name}"' in text, (status, text[:300])

    def has(self, name: str) -> bool:
        status, text = http("GET", self.url(f"/hub/api/users/{name}"), None, self._auth())
        return status == 200 and f'"name": "{name}"' in text

    def version(self) -> str | None:
        status, text = http("GET", self.url("/hub/api/"))
        return json.loads(text).get("version") if status == 200 else None


@dataclass
class App(Service):
    """A test app (Django or Flask + alembic); a version is a release folder on PYTHONPATH."""

    app: str = ""
    python: Path = Path(".")
    smoke: bool = False  # write the smoke requests the docs recommend for Django into the profile

    def _release(self, number: str) -> catalog.AppVersion:
        return catalog.version(self.app, number)

    def init_args(self) -> list[str]:
        releases = self.folder / "releases"  # as an operator deploys them: releases/<version>/
        releases.mkdir()
        for number in (self.old, self.new):
            (releases / number).symlink_to(self._release(number).source_dir, target_is_directory=True)
        module = self._release(self.old).module
        pythonpath = f"PYTHONPATH={releases}/{{version}}"
        return ["--command", command_line(["env", pythonpath, str(self.python), "-m", module, "serve",
                                         "--db", "{brain}", "--port", "{port}"]),
                "--check", command_line(["env", pythonpath, str(self.python), "-c", f"import {module}"]),
                "--env", "PYTHONDONTWRITEBYTECODE=1", "--env", "PYTHONUNBUFFERED=1"]

    def prepare(self) -> None:
        port = free_port()
        proc = try_apps.AppProcess(self._release(self.old), self.python, self.brain, self.folder / "direct-old.log",
                                   port)
        try:
            proc.start()
            assert proc.wait_booted(), "\n".join(proc.log_lines()[-15:])
            self.write("seed", port)
            assert proc.stop() == 0, "\n".join(proc.log_lines()[-15:])
        finally:
            proc.kill()

    def write(self, name: str, port: int | None = None) -> None:
        status, text = http("POST", self.url("/items", port), json.dumps({"name": name}).encode(),
                            {"Content-Type": "application/json"})
        assert status == 201, (status, text[:300])

    def has(self, name: str) -> bool:
        status, text = http("GET", self.url("/items"))
        return status == 200 and name in [item.get("name") for item in json.loads(text)["items"]]

    def version(self) -> str | None:
        status, text = http("GET", self.url("/health"))
        return json.loads(text).get("version") if status == 200 else None

    def customize(self, toml: str) -> str:
        if not self.smoke:
            return toml
        # As docs/services.md says for a Django project: real requests, including a write to each table a
        # migration changes.
        return with_profile_table(toml, self.key, self.profile, f"""
[[deployments.{self.key}.profile.smoke]]
path = "/items"
json_path = "items"
tables = ["{self.table}"]

[[deployments.{self.key}.profile.smoke]]
method = "POST"
path = "/items"
body = {{ name = "backout trial" }}
expect_status = [201]
tables = ["{self.table}"]
""")


def _isso(request: pytest.FixtureRequest) -> Service:
    venv = request.getfixturevalue("service_venv")
    for version in (envs.ISSO.old, envs.ISSO.new):
        venv("isso", version)
    return Isso("isso", envs.ISSO.old, envs.ISSO.new, layer="image", profile="generic", table="comments",
                column="text", health_path="/info", planned="brain",
                reason="is healthy and 2 smoke request(s) passed")


def _hub(request: pytest.FixtureRequest) -> Service:
    venv = request.getfixturevalue("service_venv")
    for version in (envs.JUPYTERHUB.old, envs.JUPYTERHUB.new):
        venv("jupyterhub", version)
    return Hub("jupyterhub", envs.JUPYTERHUB.old, envs.JUPYTERHUB.new, layer="brain", profile="alembic",
               table="users", column="name", health_path="/hub/health",
               refusal=re.escape(envs.JUPYTERHUB.old_on_new_log),
               reason="a trial boot of 4.1.6 on a copy of the current brain failed: exited with code 1",
               logs_requests=True)


def _app(pair_name: str, profile: str, table: str, smoke: bool, reason: str
         ) -> Callable[[pytest.FixtureRequest], Service]:
    def make(request: pytest.FixtureRequest) -> Service:
        pair = catalog.pair(pair_name)
        signs = pair.old_on_migrated.log_signs
        return App(pair.name, pair.old.version, pair.new.version, layer=pair.expected_layer, profile=profile,
                   table=table, column="name", health_path="/health", app=pair.old.app,
                   refusal=signs[0] if signs and not pair.old_on_migrated.boots else "",
                   python=request.getfixturevalue("apps_python"), smoke=smoke, reason=reason)
    return make


CASES: dict[str, Callable[[pytest.FixtureRequest], Service]] = {
    "isso": _isso,
    "jupyterhub": _hub,
    # 2.0 boots and reads; only the writing smoke request shows that its inserts fail
    "django-write-breaks": _app("django-write-breaks", "django", "djitems_item", smoke=True,
                                reason="healthy, but a smoke request failed: POST /items: HTTP 500"),
    "django-additive": _app("django-additive", "django", "djitems_item", smoke=True,
                            reason="is healthy and 2 smoke request(s) passed"),
    "alembic-refuses-at-boot": _app("alembic-refuses-at-boot", "alembic", "items", smoke=False,
                                    reason="it refused the database: "),
}


# --------------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------------

def _salvaged_rows(result: dict[str, Any], table: str) -> list[dict[str, Any]]:
    """The rows of `table` in the rollback's salvage bundle (incidents/ID/salvage/<table>.jsonl)."""
    folder = Path((result.get("salvage") or {}).get("folder") or Path(result["incident_folder"]) / "salvage")
    path = folder / f"{table}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_gone(text: str, timeout: float = 15.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    left = processes_mentioning(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.3)
        left = processes_mentioning(text)
    return left


@pytest.mark.parametrize("case", list(CASES))
def test_upgrade_then_rollback_keeps_every_record(case: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    svc = CASES[case](request)
    svc.folder, svc.port = tmp_path, free_port()
    svc.brain = tmp_path / "data" / "brain.sqlite"
    svc.brain.parent.mkdir()
    op = Operator(tmp_path, svc.secrets_env())
    started = time.monotonic()
    try:
        _scenario(svc, op)
    finally:
        stop = op.run("stop", "--yes")
        left = _wait_gone(str(tmp_path))
        for pid in left:  # only processes this test started (their command lines name its folder)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        timings = " ".join(f"{k}={v}s" for k, v in op.timings.items())
        print(f"[{case}] {time.monotonic() - started:.1f}s in all: {timings}")
    assert stop.returncode == 0, op.explain(stop, "backout stop failed")
    for name, value in svc.secrets_env().items():  # journals, diagnostics, logs, plans, the config: none has it
        leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()
                 and value.encode() in p.read_bytes()]
        assert not leaks, f"the value of {name} was written to {leaks}"
    assert not left, f"processes left behind after backout stop: {left}"
    assert http("GET", svc.health_url(), timeout=3)[0] is None, "something still answers on the service's port"


def _scenario(svc: Service, op: Operator) -> None:
    key = svc.key
    # 1. OLD's database in place, then `backout init` as the operator would write it.
    svc.prepare()
    assert svc.value("seed") in svc.stored()
    init = op.ok("init", "--runtime", "process", "--name", key, "--brain", str(svc.brain), "--port", str(svc.port),
                 "--health-url", svc.health_url(), *svc.init_args(), "-o", str(op.config), config=False)
    how = "no known migration ledger in the database" if svc.profile == "generic" else "detected from the database"
    assert f"profile: {svc.profile} ({how}" in init.stderr, op.explain(init, "init reported another profile")
    toml = op.config.read_text()
    assert f'profile = "{svc.profile}"' in toml
    for name in svc.secrets_env():
        assert svc.secrets_env()[name] not in toml and f'pass_env = ["{name}"]' in toml
    op.config.write_text(svc.customize(toml))
    op.config.chmod(0o600)
    status = op.json("status")
    assert status["profile"]["name"] == svc.profile, status["profile"]

    # 2. OLD under backout, records written through the API.
    op.ok("switch", svc.old, "--yes")
    assert svc.version() == svc.old
    before = ["seed"] + [f"pre{i}" for i in range(1, 4)]
    for name in before[1:]:
        svc.write(name)
    assert all(svc.has(name) for name in before)

    # 3. The upgrade: NEW is proved on a copy, started, watched, promoted; then the bad window.
    up = op.run("upgrade", svc.new, "--yes", "--watch", WATCH, "--json")
    assert up.returncode == 0, op.explain(up, "the upgrade did not promote NEW", key)
    events = json_lines(up.stdout)
    assert events and events[-1].get("event") == "result" and events[-1]["outcome"] == "promoted", events[-1:]
    if svc.logs_requests:  # the requests OLD served since the switch, read from its own log lines
        baseline = next(e for e in events if e.get("event") == "step" and e.get("step") == "baseline")
        counted = int(baseline["detail"].split()[0])
        assert counted >= len(before) - 1, f"the baseline read {baseline['detail']} from {svc.old}'s log"
    assert svc.version() == svc.new, op.explain(up, "NEW is not the version answering", key)
    assert all(svc.has(name) for name in before), "NEW lost records written under OLD"
    bad = [f"bad{i}" for i in range(1, 4)]
    for name in bad:
        svc.write(name)
    assert all(svc.has(name) for name in bad)

    # 4. The plan first (a trial boot of OLD on a copy of the brain decides the layer), then the rollback.
    plan = op.json("rollback", "--dry-run")["plan"]
    assert plan["layer"] == (svc.planned or svc.layer), f"{key}: the plan's layer: {plan['layer_reason']}"
    assert (plan["from_version"], plan["to_version"]) == (svc.new, svc.old), plan
    assert svc.version() == svc.new and all(svc.has(name) for name in bad), "a dry run changed something"
    if svc.refusal:  # the trial boot shows OLD's own words
        tail = (plan.get("trial") or {}).get("log_tail") or []
        assert any(re.search(svc.refusal, line) for line in tail), f"{svc.refusal!r} not in the trial log: {tail}"
    revised = svc.revise(op.config.read_text())
    if revised != op.config.read_text():
        assert "smoke request" in plan["layer_reason"], plan["layer_reason"]  # it said what lets a trial decide
        op.config.write_text(revised)
    out = op.run("rollback", "--yes", "--json", "--reason", f"acceptance: {key} {svc.new} rolled back")
    assert out.returncode == 0, op.explain(out, "the rollback failed", key)
    done = json.loads(out.stdout)
    result = done["result"]
    assert result["outcome"] == "rolled-back", result
    assert (result["from_version"], result["to_version"]) == (svc.new, svc.old), result
    assert result["layer"] == svc.layer, \
        f"{key}: layer {result['layer']}, expected {svc.layer}: {result['layer_reason']}"
    print(f"[{key}] layer {result['layer']}: {result['layer_reason']}")

    stored = svc.stored()
    for name in before:
        assert svc.value(name) in stored, f"{name} (written before the upgrade) is not in the database"
        assert svc.has(name), f"{name} (written before the upgrade) is not served by {svc.old}"
    salvaged = _salvaged_rows(result, svc.table)
    if svc.layer == "brain":
        assert result["snapshot"], result
        for name in bad:
            assert svc.value(name) not in stored, f"{name}: the brain went back, the bad window's rows with it"
            assert any(svc.value(name) in row.values() and row.get("_salvage") == "added" for row in salvaged), \
                f"{name} (bad window) is not in the salvage bundle's {svc.table}.jsonl: {salvaged}"
        assert result["salvage"]["tables"].get(svc.table) == len(bad), result["salvage"]
        summary = json.loads((Path(result["salvage"]["folder"]) / "summary.json").read_text())
        counts = {t["table"]: t["added"] for t in summary["tables"]}
        assert counts.get(svc.table) == len(bad), f"salvage summary: {counts}"
    else:
        for name in bad:
            assert svc.value(name) in stored, f"{name} (bad window) left the database on an image rollback"
            assert svc.has(name), f"{name} (bad window) is not served by {svc.old} after an image rollback"
        assert not salvaged, f"an image rollback salvaged rows: {salvaged}"
    assert svc.reason in result["layer_reason"], f"{key}: expected {svc.reason!r} in: {result['layer_reason']}"

    svc.write("after1")  # OLD answers its own API, reads and writes
    assert svc.has("after1") and svc.version() == svc.old
    status = op.json("status")
    assert status["running"]["running"] and status["running"]["version"] == svc.old, status["running"]
    assert status["health"]["ok"], status["health"]
