"""Volume-level snapshots of the data volume holding the brain: local directory, AWS EBS, GCP disks."""

from backout.volumes.base import Hooks, VolumeError, VolumeProvider, VolumeRestore, VolumeSnapshot

__all__ = ["Hooks", "VolumeError", "VolumeProvider", "VolumeRestore", "VolumeSnapshot"]
