"""The README's example configuration stays valid."""

import tomllib
from pathlib import Path

from backout.config import Config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_example_validates() -> None:
    block = README.read_text().split("```toml", 1)[1].split("```", 1)[0]
    config = Config.model_validate(tomllib.loads(block))
    assert config.deployments["engine"].expected_changes["2.4.0"].metrics == ["latency"]


def test_readme_rollback_example_validates() -> None:
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```toml")[1:]]
    data = tomllib.loads(next(b for b in blocks if "notify" in b))
    data["deployments"]["engine"]["brain"] = "brain.sqlite"
    engine = Config.model_validate(data).deployments["engine"]
    assert engine.notify.slack[0].webhook.env == "SLACK_WEBHOOK_URL" and engine.tracker is not None
    assert engine.profile.name == "engine" and engine.notify.statuspage is not None


def test_readme_upgrade_example_validates() -> None:
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```toml")[1:]]
    data = tomllib.loads(next(b for b in blocks if ".upgrade]" in b))
    data["deployments"]["engine"]["brain"] = "brain.sqlite"
    assert Config.model_validate(data).deployments["engine"].upgrade.check_every.total_seconds() == 15


def test_readme_drill_example_validates() -> None:
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```toml")[1:]]
    data = tomllib.loads(next(b for b in blocks if ".drill]" in b))
    data["deployments"]["staging"]["brain"] = "brain.sqlite"
    assert Config.model_validate(data).deployments["staging"].drill.rto.total_seconds() == 120


def test_readme_volume_example_validates() -> None:
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```toml")[1:]]
    data = tomllib.loads(next(b for b in blocks if ".volume]" in b))
    data["deployments"]["engine"]["brain"] = "/srv/engine-data/brain.sqlite"
    assert Config.model_validate(data).deployments["engine"].volume.provider == "local"


def _readme_command(starts: str) -> list[str]:
    """The README's example command line that starts with `starts`, continuation lines joined, as argv."""
    import shlex

    lines = README.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(starts))
    text = lines[first]
    while text.endswith("\\"):
        first += 1
        text = text[:-1] + " " + lines[first].strip()
    return shlex.split(text.split("  #", 1)[0])


def test_readme_init_example_gives_a_working_deployment(tmp_path: Path) -> None:
    """A person on a fresh clone (the Engine installed, ENGINE_API_KEY exported) runs the README's `init`
    example as written, then switches to a release: it serves. Only the port is swapped for a free one."""
    import os
    import sys

    from backout_cli import backout, backout_json
    from engine_proc import DEFAULT_KEY, free_port

    argv = _readme_command("backout init --runtime process")
    assert "--port" in argv and "{port}" in " ".join(argv)
    port = str(free_port())
    argv = [a.replace("8000", port) for a in argv]
    env = {"ENGINE_API_KEY": DEFAULT_KEY, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = backout(*argv[1:], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    try:
        result = backout_json("switch", "2.3.1", "--yes", cwd=tmp_path, env=env)
        assert result["healthy"], result["health"]
        status = backout_json("status", cwd=tmp_path, env=env)
        assert status["running"]["version"] == "2.3.1" and status["health"]["ok"], status
    finally:
        backout("stop", "--yes", cwd=tmp_path, env=env)


def test_readme_init_example_without_port_is_refused(tmp_path: Path) -> None:
    """The same example without its `--port`: refused before anything is written, saying how to fix it."""
    from backout_cli import backout

    argv = _readme_command("backout init --runtime process")
    at = argv.index("--port")
    out = backout(*(argv[1:at] + argv[at + 2:]), cwd=tmp_path)
    assert out.returncode == 2 and "--command uses {port}" in out.stderr and "add --port 8000" in out.stderr
    assert not (tmp_path / "backout.toml").exists()


def test_readme_engine_endpoints_list_every_route_and_the_limits() -> None:
    """The Engine's "Endpoints" paragraph names every route it serves, the ones that need no key, and the
    limits its request bodies are held to (with the status each gets)."""
    from engine.app import _ROUTES
    from engine.validation import MAX_JSON_DEPTH

    import re

    text = README.read_text()
    paragraph = " ".join(text.split("\nEndpoints ", 1)[1].split("\n\n", 1)[0].split())
    documented = set()
    for method, path in re.findall(r"`(GET|POST|PUT|DELETE) (/[^`?\s]*)", paragraph):
        braces = re.search(r"\{([^}]*)\}", path)
        alternatives = braces[1].split(",") if braces else [""]
        documented |= {f"{method} {path.replace(braces[0], a) if braces else path}" for a in alternatives}
    served = {f"{m} {route.path}" for route in _ROUTES for m in route.methods - {"HEAD"}}
    assert served == documented, (served - documented, documented - served)
    assert "all but `/health` and `/openapi.json` need `X-Engine-Key`" in paragraph
    assert f"nest deeper than {MAX_JSON_DEPTH} levels get 400 `INVALID_JSON`" in paragraph
    assert "over 1 MiB get 413" in paragraph
