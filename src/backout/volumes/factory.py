"""The volume provider a deployment's `[deployments.NAME.volume]` section asks for."""

from __future__ import annotations

from backout.config import Target
from backout.volumes.base import VolumeProvider

__all__ = ["volume_for"]


def volume_for(target: Target) -> VolumeProvider | None:
    """The deployment's volume provider, or None when it has no volume section (cloud SDKs imported lazily)."""
    settings = target.settings.volume if target.settings is not None else None
    if settings is None:
        return None
    if settings.provider == "local":
        from backout.volumes.local import LocalVolume

        return LocalVolume(settings, target.deployment, target.state_dir)
    if settings.provider == "ebs":
        from backout.volumes.ebs import EbsVolume

        return EbsVolume(settings, target.deployment, target.state_dir, brain=target.brain)
    from backout.volumes.gcp import GcpVolume

    # endpoint_url: another Compute Engine endpoint (ADC as usual; anonymous for a local http one)
    return GcpVolume(settings, target.deployment, target.state_dir, endpoint=settings.endpoint_url)
