"""Real third-party SQLite-backed services from PyPI, one virtual environment per (service, version).

The acceptance tests upgrade and roll back services that backout did not write. Each service in
`SERVICES` names two pinned releases, OLD -> NEW, where NEW migrates OLD's SQLite database, and
says what OLD does on the migrated database: it still serves (a rollback of the image is enough,
``expected_layer == "image"``) or it refuses to start (the brain has to be rolled back too,
``expected_layer == "brain"``). FINDINGS.md beside this file has the evidence (log lines, exit
codes, timings).

    from envs import SERVICES, ensure_venv
    spec = SERVICES["jupyterhub"]
    venv = ensure_venv("jupyterhub", spec.old)        # builds once, then cached
    argv = spec.argv(spec.old, brain=..., port=..., state=...)
    env = spec.environ(spec.old, brain=..., port=..., state=...)   # os.environ + the service's
    spec.write_config(spec.old, brain=..., port=..., state=...)    # config file, when it has one

Venvs live under ``$BACKOUT_THIRDPARTY_CACHE`` (default ``~/.cache/backout-thirdparty``) as
``<cache>/<service>/<version>/``, so a backout command template can name one with
``{version}``. `ensure_venv` is idempotent and safe to call from several processes at once
(pytest-xdist workers): one builder per env, under an ``fcntl.flock`` on
``<cache>/<service>/<version>.lock``; the others wait and then find it ready. An env is ready when
its marker file ``.backout-env.json`` records the same pins and interpreter; anything else in the
folder (a build that died half way, other pins) is removed and built again. Support files (the
JupyterHub config) are rewritten on every call when their text changed, without a rebuild.

Pins: every distribution of each env is pinned (``--no-deps`` install of the full list, then
``pip check``), so a new release of a transitive dependency cannot break an old service (it
does: prefect 3.4.25 with today's fastapi fails at import, ``Body() got an unexpected keyword
argument 'min_items'``). The lists were resolved on CPython 3.11 (prefect's with pip's
``--uploaded-prior-to`` set to shortly after the release) and checked by running the service.
The interpreter is ``$BACKOUT_THIRDPARTY_PYTHON``, else ``python3.11`` on PATH, else this one if
it is 3.11. Two packages are sdists compiled at install (misaka, for isso: gcc and the Python
headers; isso 0.14.0 itself); their build environments take setuptools/cffi from the index.

Commands are argv lists (never a shell). Templates use these placeholders:
``{venv}`` the env's folder, ``{version}``, ``{brain}`` the SQLite file, ``{port}``,
``{state}`` a private folder for the instance (config file, PREFECT_HOME, ...),
``{config}`` the rendered config file (``{state}/<config_name>``), and, in write/read requests,
``{name}`` a unique record name chosen by the caller.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Literal, Mapping

__all__ = ["CACHE_ENV", "PYTHON_ENV", "HttpCall", "ServiceSpec", "SERVICES", "BuildError", "cache_dir",
           "venv_path", "ensure_venv", "ensure_all", "venv_python"]

CACHE_ENV = "BACKOUT_THIRDPARTY_CACHE"
PYTHON_ENV = "BACKOUT_THIRDPARTY_PYTHON"
_MARKER = ".backout-env.json"
_BUILD_TIMEOUT = 1200.0  # seconds for one pip install; a cold CI machine downloads ~60 MB for prefect


class BuildError(RuntimeError):
    """A venv could not be built; the message carries the tail of pip's output."""


# --------------------------------------------------------------------------------------------------
# The data table
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpCall:
    """One request to the service, relative to ``http://127.0.0.1:{port}``.

    ``path``, ``body`` values and ``headers`` values may contain ``{name}`` (a record name the
    caller picks, letters/digits/dashes) and ``{token}`` (the service's API token, see
    `ServiceSpec.token_env`). ``expect`` lists the status codes that mean success and
    ``expect_text`` a string the answer contains (after the placeholders are filled in).
    """

    method: str
    path: str
    body: Mapping[str, object] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = (200,)
    expect_text: str = ""

    def render(self, name: str = "", token: str = "") -> tuple[str, str, bytes | None, dict[str, str]]:
        """(method, path, body bytes or None, headers) with the placeholders filled in."""
        fill = {"name": name, "token": token}
        headers = {k: v.format(**fill) for k, v in self.headers.items()}
        data = None
        if self.body is not None:
            body = {k: (v.format(**fill) if isinstance(v, str) else v) for k, v in self.body.items()}
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        return self.method, self.path.format(**fill), data, headers


@dataclass(frozen=True)
class ServiceSpec:
    """One real service at two releases, OLD -> NEW, and how to drive it on 127.0.0.1."""

    name: str
    description: str
    old: str
    new: str
    pins: Mapping[str, tuple[str, ...]]  # version -> every distribution of the env, "name==version"
    start: tuple[str, ...]  # argv template (placeholders in the module docstring)
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment (templates too)
    config_name: str | None = None  # file name of the rendered config, {state}/<config_name>
    config_template: str | None = None  # its text; str.format placeholders, literal braces doubled
    support_files: Mapping[str, str] = field(default_factory=dict)  # files kept in the venv folder
    health: HttpCall = HttpCall("GET", "/")
    version_call: HttpCall | None = None  # answers with the running version (expect_text = version)
    write: HttpCall = HttpCall("GET", "/")
    read: HttpCall = HttpCall("GET", "/")
    migrate: tuple[str, ...] | None = None  # argv template run for NEW after OLD stopped; None: at boot
    migrates_at_boot: bool = True
    fresh_needs_migrate: bool = False  # an empty database is created by `migrate` (that version's), not at boot
    ledger_sql: str = ""  # reads the schema stamp from the SQLite file
    stamps: Mapping[str, str] = field(default_factory=dict)  # version -> stamp on a database it made/migrated
    expected_layer: Literal["image", "brain"] = "image"
    old_on_new: str = ""  # what OLD does on NEW's database (evidence in FINDINGS.md)
    old_on_new_exit: int | None = None  # OLD's exit code there, when it refuses to start
    old_on_new_log: str = ""  # a line OLD prints there
    token_env: str | None = None  # environment variable holding the API token (a secret: pass_env)
    test_token: str | None = None  # a throwaway value the tests may use for it
    boot_seconds: float = 30.0  # generous bound on the time to healthy here (2 loaded cores)
    stop_exit_codes: tuple[int, ...] = (0, 143, -15)  # clean exits after SIGTERM

    # -- rendering ------------------------------------------------------------------------------

    def _values(self, version: str, brain: os.PathLike[str] | str, port: int, state: os.PathLike[str] | str
                ) -> dict[str, str]:
        state = str(state)
        values = {"venv": str(venv_path(self.name, version)), "version": version, "brain": str(brain),
                  "port": str(port), "state": state}
        values["config"] = os.path.join(state, self.config_name) if self.config_name else ""
        return values

    def argv(self, version: str, *, brain: os.PathLike[str] | str, port: int,
             state: os.PathLike[str] | str) -> list[str]:
        """The start command for `version` (run it with `environ` and, when set, `write_config`)."""
        values = self._values(version, brain, port, state)
        return [token.format(**values) for token in self.start]

    def migrate_argv(self, version: str, *, brain: os.PathLike[str] | str, port: int,
                     state: os.PathLike[str] | str) -> list[str] | None:
        """The separate migrate command for `version` (NEW), or None when it migrates at boot."""
        if self.migrate is None:
            return None
        values = self._values(version, brain, port, state)
        return [token.format(**values) for token in self.migrate]

    def service_env(self, version: str, *, brain: os.PathLike[str] | str, port: int,
                    state: os.PathLike[str] | str) -> dict[str, str]:
        """Only the service's own variables (no token), rendered."""
        values = self._values(version, brain, port, state)
        return {k: v.format(**values) for k, v in self.env.items()}

    def environ(self, version: str, *, brain: os.PathLike[str] | str, port: int,
                state: os.PathLike[str] | str, token: str | None = None,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) + the service's variables + the token, for subprocess."""
        env = dict(os.environ if base is None else base)
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        env.update(self.service_env(version, brain=brain, port=port, state=state))
        if self.token_env:
            value = token or env.get(self.token_env) or self.test_token
            if value:
                env[self.token_env] = value
        return env

    def write_config(self, version: str, *, brain: os.PathLike[str] | str, port: int,
                     state: os.PathLike[str] | str) -> Path | None:
        """Render the config file into `state` (created 0700); its path, or None if it has none."""
        if not self.config_name or self.config_template is None:
            return None
        Path(state).mkdir(parents=True, exist_ok=True, mode=0o700)
        path = Path(state) / self.config_name
        path.write_text(self.config_template.format(**self._values(version, brain, port, state)))
        return path

    def url(self, port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{port}{path}"

    def backout_command(self, kind: Literal["start", "migrate"] = "start") -> str:
        """A command template for backout's process runtime ({version} {brain} {port} {state}).

        The service's environment variables are put in front with ``env NAME=VALUE`` (they
        depend on {brain}/{state}); the token is not: give it to backout with pass_env =
        [token_env]. ``{config}`` becomes ``{state}/<config_name>``: render `config_template`
        there (it uses the same placeholders). The cache folder is this machine's, resolved now.
        """
        import shlex

        tokens = self.start if kind == "start" else self.migrate
        if tokens is None:
            raise ValueError(f"{self.name} has no separate migrate command (it migrates at boot)")
        venv = str(cache_dir() / self.name) + "/{version}"
        config = "{state}/" + (self.config_name or "")
        fixed = {"venv": venv, "config": config, "version": "{version}", "brain": "{brain}",
                 "port": "{port}", "state": "{state}"}
        prefix = ["env"] + [f"{k}={v.format(**fixed)}" for k, v in self.env.items()] if self.env else []
        return " ".join(shlex.quote(t) for t in prefix + [t.format(**fixed) for t in tokens])


# -- isso: comment server, PRAGMA user_version, migrates at boot, OLD keeps working -----------------

_ISSO_CONFIG = """\
# isso config written by backout's tests (rendered per instance)
[general]
dbpath = {brain}
host = http://127.0.0.1:{port}/
notify = stdout
log-file =
gravatar = false

[server]
listen = http://127.0.0.1:{port}/
reload = false

[guard]
# the default rate limit (2 comments a minute per address) would refuse the tests' writes
enabled = false

[moderation]
enabled = false

[admin]
enabled = false
"""

_ISSO_COMMON = ("bleach==6.4.0", "cffi==2.1.1", "html5lib==1.1", "itsdangerous==2.2.0", "Jinja2==3.1.6",
                "MarkupSafe==3.0.4", "misaka==2.1.1", "pycparser==3.12", "six==1.17.0",
                "webencodings==0.6.1", "Werkzeug==3.1.9")

ISSO = ServiceSpec(
    name="isso",
    description="Isso, a self-hosted comment server (werkzeug, one SQLite file)",
    old="0.13.0",
    new="0.14.0",
    pins={
        "0.13.0": ("isso==0.13.0",) + _ISSO_COMMON,
        # isso 0.14 requires setuptools (a Python 3.11 venv has 65.5.0)
        "0.14.0": ("isso==0.14.0", "mistune==3.4.0", "setuptools==65.5.0") + _ISSO_COMMON,
    },
    start=("{venv}/bin/isso", "-c", "{config}", "run"),
    config_name="isso.cfg",
    config_template=_ISSO_CONFIG,
    health=HttpCall("GET", "/info", expect_text='"version"'),
    version_call=HttpCall("GET", "/info"),
    # a new thread needs "title" (else isso fetches the page from `host` to find one)
    write=HttpCall("POST", "/new?uri=%2Fbackout%2F{name}",
                   body={"text": "comment {name}", "author": "backout", "title": "backout {name}"},
                   expect=(201,), expect_text="comment {name}"),
    read=HttpCall("GET", "/?uri=%2Fbackout%2F{name}", expect=(200,), expect_text="comment {name}"),
    migrate=None,
    migrates_at_boot=True,
    ledger_sql="PRAGMA user_version",
    stamps={"0.13.0": "3", "0.14.0": "5"},
    expected_layer="image",
    old_on_new=("0.14.0 migrates user_version 3 -> 5 at boot (rebuilds `comments` with text NOT NULL); "
                "0.13.0 skips migrate() when user_version >= its MAX_VERSION 3, boots and reads and "
                "writes comments normally."),
    old_on_new_log="INFO: Using database at",
    boot_seconds=20.0,
)


# -- JupyterHub: alembic_version, separate `jupyterhub upgrade-db`, OLD refuses ------------------

_JUPYTERHUB_CONFIG = '''\
"""JupyterHub config for backout's tests: the Hub's REST API on 127.0.0.1, no proxy process.

Port and database come from the command line (--JupyterHub.hub_port=PORT, --db=sqlite:///PATH).
BACKOUT_JH_TOKEN (required) is the API token of the service "backout", which may create and
list users. JPY_COOKIE_SECRET (hex) may be set; otherwise one is derived from the token.
"""
import hashlib
import os

from jupyterhub.proxy import Proxy


class NoProxy(Proxy):
    """No configurable-http-proxy (an npm package): the tests talk to the Hub's port directly."""

    should_start = False

    async def add_route(self, routespec, target, data):
        pass

    async def delete_route(self, routespec):
        pass

    async def get_all_routes(self):
        return {}


c = get_config()  # noqa: F821
token = os.environ["BACKOUT_JH_TOKEN"]
c.JupyterHub.proxy_class = NoProxy
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.authenticator_class = "dummy"  # no PAM; a browser login would need the token as password
c.DummyAuthenticator.password = token
c.JupyterHub.cleanup_servers = False
if not os.environ.get("JPY_COOKIE_SECRET"):
    c.JupyterHub.cookie_secret = hashlib.sha256(b"backout-cookie:" + token.encode()).digest()
c.JupyterHub.services = [{"name": "backout", "api_token": token}]
c.JupyterHub.load_roles = [
    {"name": "backout-admin", "scopes": ["admin:users", "list:users"], "services": ["backout"]},
]
'''

JUPYTERHUB = ServiceSpec(
    name="jupyterhub",
    description="JupyterHub's Hub (tornado + SQLAlchemy/alembic), REST API only, no proxy",
    old="4.1.6",
    new="5.4.6",
    pins={
        "4.1.6": (
            "jupyterhub==4.1.6", "alembic==1.20.1", "async-generator==1.10", "attrs==26.1.0",
            "certifi==2026.10.19.post1", "certipy==0.2.3", "cffi==2.1.1", "charset-normalizer==3.5.3",
            "cryptography==50.0.2", "idna==3.20", "Jinja2==3.1.6", "jsonschema==4.26.0",
            "jsonschema-specifications==2025.9.1", "jupyter-telemetry==0.1.0", "Mako==1.4.3",
            "MarkupSafe==3.0.4", "oauthlib==4.0.1", "packaging==26.4", "pamela==1.2.0",
            "prometheus_client==0.26.0", "pycparser==3.12", "python-dateutil==4.0.0",
            "python-json-logger==4.2.0", "referencing==0.37.0", "requests==2.34.2", "rpds-py==2026.9.1",
            "ruamel.yaml==0.19.1", "SQLAlchemy==2.1.9", "tornado==6.6.1", "traitlets==5.16.1",
            "typing_extensions==4.16.0", "tzdata==2026.6", "urllib3==2.8.0"),
        "5.4.6": (
            "jupyterhub==5.4.6", "alembic==1.20.1", "annotated-types==0.8.0", "arrow==1.4.0",
            "attrs==26.1.0", "certifi==2026.10.19.post1", "certipy==0.2.3", "cffi==2.1.1",
            "charset-normalizer==3.5.3", "cryptography==50.0.2", "fqdn==1.6.0", "idna==3.20",
            "isoduration==20.11.0", "Jinja2==3.1.6", "jsonpointer==3.12", "jsonschema==4.26.0",
            "jsonschema-specifications==2025.9.1", "jupyter-events==0.12.1", "lark==1.3.1",
            "Mako==1.4.3", "MarkupSafe==3.0.4", "oauthlib==4.0.1", "packaging==26.4", "pamela==1.2.0",
            "prometheus_client==0.26.0", "pycparser==3.12", "pydantic==2.14.4", "pydantic_core==2.50.5",
            "python-dateutil==4.0.0", "python-json-logger==4.2.0", "PyYAML==6.0.4", "referencing==0.37.0",
            "requests==2.34.2", "rfc3339-validator==0.1.4", "rfc3986-validator==0.1.1",
            "rfc3987-syntax==1.1.0", "rpds-py==2026.9.1", "six==1.17.0", "SQLAlchemy==2.1.9",
            "tornado==6.6.1", "traitlets==5.16.1", "typing-inspection==0.4.5", "typing_extensions==4.16.0",
            "tzdata==2026.6", "uri-template==1.3.0", "urllib3==2.8.0", "webcolors==25.10.0"),
    },
    start=("{venv}/bin/jupyterhub", "-f", "{venv}/backout_jupyterhub_config.py", "--db=sqlite:///{brain}",
           "--JupyterHub.hub_port={port}"),
    support_files={"backout_jupyterhub_config.py": _JUPYTERHUB_CONFIG},
    health=HttpCall("GET", "/hub/health"),
    version_call=HttpCall("GET", "/hub/api/"),
    write=HttpCall("POST", "/hub/api/users/{name}", headers={"Authorization": "token {token}"},
                   expect=(201,), expect_text='"name": "{name}"'),
    read=HttpCall("GET", "/hub/api/users/{name}", headers={"Authorization": "token {token}"},
                  expect=(200,), expect_text='"name": "{name}"'),
    # upgrade-db runs the `alembic` command by name: the venv's bin must come first on PATH. It also
    # copies the database to <brain>.<YYYY-mm-dd-HHMMSS> beside it before migrating.
    migrate=("env", "PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin", "{venv}/bin/jupyterhub", "upgrade-db",
             "-f", "{venv}/backout_jupyterhub_config.py", "--db=sqlite:///{brain}"),
    migrates_at_boot=False,
    ledger_sql="SELECT version_num FROM alembic_version",
    stamps={"4.1.6": "0eee8c825d24", "5.4.6": "4621fec11365"},
    expected_layer="brain",
    old_on_new=("Any Hub whose alembic head differs from the database's refuses to start. NEW on "
                "OLD's database without upgrade-db exits 1 the same way (so the migrate command is "
                "required); OLD on the migrated database exits 1."),
    old_on_new_exit=1,
    old_on_new_log=("Found database schema version 4621fec11365 != 0eee8c825d24. Backup your database "
                    "and run `jupyterhub upgrade-db` to upgrade to the latest schema."),
    token_env="BACKOUT_JH_TOKEN",
    test_token="backout-test-token-0123456789abcdef",
    boot_seconds=45.0,
)


# -- Prefect server: alembic_version, migrates at boot, OLD crashes ------------------------------

_PREFECT_COMMON_ENV = {
    "PREFECT_HOME": "{state}/prefect-home",
    "PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///{brain}",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_API_URL": "",
    "COLUMNS": "200",  # rich wraps tracebacks at 80 columns otherwise
}

_PREFECT_PINS = {
    # resolved with pip --uploaded-prior-to=2025-11-01T00:00:00Z (3.4.25 came out in late October 2025)
    "3.4.25": (
        "prefect==3.4.25", "aiosqlite==0.21.0", "alembic==1.17.1", "annotated-doc==0.0.3",
        "annotated-types==0.7.0", "anyio==4.11.0", "apprise==1.9.5", "asgi-lifespan==2.1.0",
        "asyncpg==0.30.0", "attrs==25.4.0", "cachetools==6.2.1", "certifi==2025.10.5", "cffi==2.0.0",
        "charset-normalizer==3.4.4", "click==8.3.0", "cloudpickle==3.1.1", "colorama==0.4.6",
        "coolname==2.2.0", "cryptography==46.0.3", "dateparser==1.2.2", "docker==7.1.0",
        "exceptiongroup==1.3.0", "fastapi==0.120.4", "fsspec==2025.10.0", "graphviz==0.21",
        "greenlet==3.2.4", "griffe==1.14.0", "h11==0.16.0", "h2==4.3.0", "hpack==4.1.0",
        "httpcore==1.0.9", "httpx==0.28.1", "humanize==4.14.0", "hyperframe==6.1.0", "idna==3.11",
        "importlib_metadata==8.7.0", "Jinja2==3.1.6", "jinja2-humanize-extension==0.4.0",
        "jsonpatch==1.33", "jsonpointer==3.0.0", "jsonschema==4.25.1",
        "jsonschema-specifications==2025.9.1", "Mako==1.3.10", "Markdown==3.9", "markdown-it-py==4.0.0",
        "MarkupSafe==3.0.3", "mdurl==0.1.2", "oauthlib==3.3.1", "opentelemetry-api==1.38.0",
        "orjson==3.11.4", "packaging==25.0", "pathspec==0.12.1", "pendulum==3.1.0", "pluggy==1.6.0",
        "prometheus_client==0.23.1", "pycparser==2.23", "pydantic==2.12.3", "pydantic-extra-types==2.10.6",
        "pydantic-settings==2.11.0", "pydantic_core==2.41.4", "Pygments==2.19.2",
        "python-dateutil==2.9.0.post0", "python-dotenv==1.2.1", "python-slugify==8.0.4", "pytz==2025.2",
        "PyYAML==6.0.3", "readchar==4.2.1", "referencing==0.37.0", "regex==2025.10.23",
        "requests==2.32.5", "requests-oauthlib==2.0.0", "rfc3339-validator==0.1.4", "rich==14.2.0",
        "rpds-py==0.28.0", "ruamel.yaml==0.18.16", "ruamel.yaml.clib==0.2.14", "semver==3.0.4",
        "shellingham==1.5.4", "six==1.17.0", "sniffio==1.3.1", "SQLAlchemy==2.0.44", "starlette==0.49.1",
        "text-unidecode==1.3", "toml==0.10.2", "typer==0.19.2", "typing-inspection==0.4.2",
        "typing_extensions==4.15.0", "tzdata==2025.2", "tzlocal==5.3.1", "urllib3==2.5.0", "uv==0.9.7",
        "uvicorn==0.38.0", "websockets==15.0.1", "zipp==3.23.0"),
    # resolved with pip --uploaded-prior-to=2026-05-15T00:00:00Z (3.6.29 came out in early May 2026)
    "3.6.29": (
        "prefect==3.6.29", "aiosqlite==0.22.1", "alembic==1.18.4", "amplitude-analytics==1.2.3",
        "annotated-doc==0.0.4", "annotated-types==0.7.0", "anyio==4.13.0", "apprise==1.10.0",
        "asgi-lifespan==2.1.0", "asyncpg==0.31.0", "attrs==26.1.0", "beartype==0.22.9",
        "burner-redis==0.1.7", "cachetools==7.1.1", "certifi==2026.4.22", "cffi==2.0.0",
        "charset-normalizer==3.4.7", "click==8.3.3", "cloudpickle==3.1.2", "colorama==0.4.6",
        "coolname==5.0.0", "cronsim==2.7", "cryptography==48.0.0", "cyclopts==4.12.0",
        "dateparser==1.4.0", "docker==7.1.0", "docstring_parser==0.18.0", "docutils==0.22.4",
        "exceptiongroup==1.3.1", "fastapi==0.136.1", "fsspec==2026.4.0", "graphviz==0.21",
        "greenlet==3.5.0", "griffe==2.0.2", "griffecli==2.0.2", "griffelib==2.0.2", "h11==0.16.0",
        "h2==4.3.0", "hpack==4.1.0", "httpcore==1.0.9", "httpx==0.28.1", "humanize==4.15.0",
        "hyperframe==6.1.0", "idna==3.15", "importlib_metadata==8.7.1", "Jinja2==3.1.6",
        "jinja2-humanize-extension==0.4.0", "jsonpatch==1.33", "jsonpointer==3.1.1", "jsonschema==4.26.0",
        "jsonschema-specifications==2025.9.1", "Mako==1.3.12", "Markdown==3.10.2", "markdown-it-py==4.2.0",
        "MarkupSafe==3.0.3", "mdurl==0.1.2", "oauthlib==3.3.1", "opentelemetry-api==1.41.1",
        "orjson==3.11.9", "packaging==26.2", "pathspec==1.1.1", "pendulum==3.2.0", "pluggy==1.6.0",
        "prometheus_client==0.25.0", "py-key-value-aio==0.4.4", "pycparser==3.0", "pydantic==2.13.4",
        "pydantic-extra-types==2.11.1", "pydantic-settings==2.14.1", "pydantic_core==2.46.4",
        "pydocket==0.20.2", "Pygments==2.20.0", "python-dateutil==2.9.0.post0", "python-dotenv==1.2.2",
        "python-json-logger==4.1.0", "python-slugify==8.0.4", "pytz==2026.2", "PyYAML==6.0.3",
        "readchar==4.2.2", "redis==7.4.0", "referencing==0.37.0", "regex==2026.5.9", "requests==2.34.2",
        "requests-oauthlib==2.0.0", "rfc3339-validator==0.1.4", "rich==15.0.0", "rich-rst==1.3.2",
        "rpds-py==0.30.0", "ruamel.yaml==0.19.1", "ruamel.yaml.clib==0.2.15", "semver==3.0.4",
        "shellingham==1.5.4", "six==1.17.0", "sniffio==1.3.1", "SQLAlchemy==2.0.49", "starlette==1.0.0",
        "text-unidecode==1.3", "toml==0.10.2", "typer==0.25.1", "typing-inspection==0.4.2",
        "typing_extensions==4.15.0", "tzdata==2026.2", "tzlocal==5.3.1", "uncalled-for==0.3.2",
        "urllib3==2.7.0", "uvicorn==0.47.0", "websockets==16.0", "zipp==3.23.1"),
}

PREFECT = ServiceSpec(
    name="prefect",
    description="Prefect's API server (FastAPI + SQLAlchemy/alembic), migrates on start",
    old="3.4.25",
    new="3.6.29",
    pins=_PREFECT_PINS,
    start=("{venv}/bin/prefect", "server", "start", "--host", "127.0.0.1", "--port", "{port}", "--no-services"),
    env=_PREFECT_COMMON_ENV,
    migrate=None,
    migrates_at_boot=True,
    ledger_sql="SELECT version_num FROM alembic_version",
    stamps={"3.4.25": "9e83011d1f2a", "3.6.29": "4dfa692e02a7"},
    expected_layer="brain",
    old_on_new=("NEW adds two indexes at boot (alembic 9e83011d1f2a -> 4dfa692e02a7). OLD runs "
                "`alembic upgrade head` at boot too, cannot find the newer revision and exits 3 "
                "before it listens."),
    old_on_new_exit=3,
    old_on_new_log="alembic.util.exc.CommandError: Can't locate revision identified by '4dfa692e02a7'",
    boot_seconds=90.0,
    health=HttpCall("GET", "/api/health", expect_text="true"),
    version_call=HttpCall("GET", "/api/admin/version"),
    # POST /api/flows/ answers 201 for a new flow (200 when the name exists)
    write=HttpCall("POST", "/api/flows/", body={"name": "{name}"}, expect=(200, 201),
                   expect_text='"name":"{name}"'),
    read=HttpCall("GET", "/api/flows/name/{name}", expect=(200,), expect_text='"name":"{name}"'),
)

# The same pair with PREFECT_API_DATABASE_MIGRATE_ON_START=false and the migration as a separate
# step: OLD then never looks at alembic_version, and serves the migrated database (only indexes
# were added), so here the image layer is enough.
PREFECT_MANUAL = replace(
    PREFECT,
    description="Prefect's API server with migrate-on-start off and `prefect server database upgrade -y`",
    env={**_PREFECT_COMMON_ENV, "PREFECT_API_DATABASE_MIGRATE_ON_START": "false"},
    migrate=("{venv}/bin/prefect", "server", "database", "upgrade", "-y"),
    migrates_at_boot=False,
    fresh_needs_migrate=True,  # with migrate-on-start off the server does not create its tables either
    expected_layer="image",
    old_on_new=("With migrate-on-start off OLD does not check the revision; it boots on the migrated "
                "database and creates and reads flows normally."),
    old_on_new_exit=None,
    old_on_new_log="Configure Prefect to communicate with the server with:",
)

# Keyed by deployment name; two entries may share one service's venvs (name).
SERVICES: dict[str, ServiceSpec] = {
    "isso": ISSO,
    "jupyterhub": JUPYTERHUB,
    "prefect": PREFECT,
    "prefect-manual": PREFECT_MANUAL,
}


# --------------------------------------------------------------------------------------------------
# Building the venvs
# --------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """$BACKOUT_THIRDPARTY_CACHE, else ~/.cache/backout-thirdparty (not created here)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser().resolve() if value else Path.home() / ".cache" / "backout-thirdparty"


def venv_path(service: str, version: str) -> Path:
    """Where the env of `service` at `version` lives (built or not): <cache>/<service>/<version>."""
    return cache_dir() / service / version


def venv_python(service: str, version: str) -> Path:
    return venv_path(service, version) / "bin" / "python"


def _base_python() -> str:
    explicit = os.environ.get(PYTHON_ENV)
    if explicit:
        return explicit
    found = shutil.which("python3.11")
    if found:
        return found
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    raise BuildError("the pins are for CPython 3.11: put python3.11 on PATH or set "
                     f"{PYTHON_ENV} to its path")


def _spec_for(service: str) -> ServiceSpec:
    for spec in SERVICES.values():
        if spec.name == service:
            return spec
    raise KeyError(f"unknown service {service!r}; known: {sorted({s.name for s in SERVICES.values()})}")


def _fingerprint(python: str, pins: Iterable[str]) -> str:
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True,
                             text=True, check=True, timeout=60).stdout.strip()
    payload = json.dumps({"python": version, "pins": sorted(pins)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write_support_files(spec: ServiceSpec, path: Path) -> None:
    """(Re)write the env's support files when their text changed (atomic: readers never see half)."""
    for name, text in spec.support_files.items():
        target = path / name
        try:
            if target.read_text() == text:
                continue
        except OSError:
            pass
        tmp = path / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)


def _ready(path: Path, fingerprint: str) -> bool:
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("fingerprint") == fingerprint and (path / "bin" / "python").exists()


def _run(argv: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
    with log.open("ab") as out:
        out.write(("\n$ " + " ".join(argv) + "\n").encode())
        out.flush()
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, timeout=_BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BuildError(f"{argv[0]} {' '.join(argv[1:4])} ... timed out after {_BUILD_TIMEOUT:g}s; "
                             f"see {log}") from None
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"{' '.join(argv[:4])} ... exited {proc.returncode}; last lines of {log}:\n"
                         + "\n".join(tail))


def ensure_venv(service: str, version: str, *, quiet: bool = True) -> Path:
    """Build (once) and return the venv of `service` at `version`; a cached one is reused.

    Idempotent and safe across processes (an exclusive flock per env). Raises BuildError (with
    pip's last lines) when pip fails, KeyError for an unknown service or version.
    """
    spec = _spec_for(service)
    if version not in spec.pins:
        raise KeyError(f"{service} has no pins for {version!r}; known: {sorted(spec.pins)}")
    pins = spec.pins[version]
    python = _base_python()
    fingerprint = _fingerprint(python, pins)
    path = venv_path(service, version)
    if _ready(path, fingerprint):
        _write_support_files(spec, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f"{version}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _ready(path, fingerprint):  # else another process built it while we waited
                _build(spec, version, pins, python, fingerprint, path, quiet)
            _write_support_files(spec, path)
            return path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(spec: ServiceSpec, version: str, pins: tuple[str, ...], python: str, fingerprint: str,
           path: Path, quiet: bool) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    log = path.parent / f"{version}.build.log"
    log.write_text(f"building {spec.name} {version} with {python}\n")
    started = time.monotonic()
    if not quiet:
        print(f"[envs] building {spec.name} {version} in {path} (log {log})", file=sys.stderr, flush=True)
    _run([python, "-m", "venv", str(path)], log)
    req = path / "backout-requirements.txt"
    req.write_text("\n".join(pins) + "\n")
    env = dict(os.environ)
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env.setdefault("PIP_NO_INPUT", "1")
    vpy = str(path / "bin" / "python")
    # --no-deps: the list is complete; `pip check` below proves it
    _run([vpy, "-m", "pip", "install", "--no-deps", "-r", str(req)], log, env)
    _run([vpy, "-m", "pip", "check"], log, env)
    seconds = round(time.monotonic() - started, 1)
    marker = {"service": spec.name, "version": version, "fingerprint": fingerprint, "python": python,
              "pins": list(pins), "build_seconds": seconds,
              "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = path / (_MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, path / _MARKER)
    if not quiet:
        print(f"[envs] built {spec.name} {version} in {seconds:g}s", file=sys.stderr, flush=True)


def build_seconds(service: str, version: str) -> float | None:
    """How long the cached env took to build (from its marker), or None."""
    try:
        return float(json.loads((venv_path(service, version) / _MARKER).read_text())["build_seconds"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_all(names: Iterable[str] | None = None, *, quiet: bool = True) -> dict[tuple[str, str], Path]:
    """Build the OLD and NEW envs of the named deployments (default: all); {(service, version): venv}."""
    out: dict[tuple[str, str], Path] = {}
    for key in names or SERVICES:
        spec = SERVICES[key]
        for version in (spec.old, spec.new):
            if (spec.name, version) not in out:
                out[(spec.name, version)] = ensure_venv(spec.name, version, quiet=quiet)
    return out


if __name__ == "__main__":  # python tests/thirdparty/envs.py [deployment ...]: build and list
    for (service, version), venv in ensure_all(sys.argv[1:] or None, quiet=False).items():
        print(f"{service:12} {version:8} {venv}  ({build_seconds(service, version)}s to build)")
