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
