"""The README's example configuration stays valid."""

import tomllib
from pathlib import Path

from backout.config import Config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_example_validates() -> None:
    block = README.read_text().split("```toml", 1)[1].split("```", 1)[0]
    config = Config.model_validate(tomllib.loads(block))
    assert config.deployments["engine"].expected_changes["2.4.0"].metrics == ["latency"]
