"""Build the runtime adapter a deployment's configuration asks for."""

from __future__ import annotations

from backout.config import Target
from backout.history import deployment_state
from backout.runtime.base import Runtime

__all__ = ["runtime_for"]


def runtime_for(target: Target) -> Runtime:
    """The process or compose adapter for `target` (ConfigError without a configured runtime)."""
    settings = target.require_settings()
    state = deployment_state(target.state_dir, target.deployment) / "runtime"
    if settings.runtime == "compose":
        from backout.runtime.compose import ComposeRuntime

        assert settings.compose is not None
        return ComposeRuntime(settings.compose, target.brain, target.health_url, state, profile=target.profile)
    from backout.runtime.process import ProcessRuntime

    assert settings.process is not None
    return ProcessRuntime(settings.process, target.brain, target.health_url, state, profile=target.profile)
