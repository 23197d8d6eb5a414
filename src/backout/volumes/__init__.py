"""Volume-level snapshots of the data volume holding the brain: local directory, AWS EBS, GCP disks.

Providers are imported from their modules (`backout.volumes.local`, `.ebs`, `.gcp`) or built from a
deployment's settings by `backout.volumes.factory.volume_for`, so the cloud SDKs load only when used."""

from backout.volumes.base import Hooks, VolumeError, VolumeProvider, VolumeRestore, VolumeSnapshot

__all__ = ["Hooks", "VolumeError", "VolumeProvider", "VolumeRestore", "VolumeSnapshot"]
