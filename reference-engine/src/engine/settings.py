"""Settings of one Engine process, from flags and the environment (secrets only from the env)."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from engine.releases import Release

__all__ = ["Settings", "SettingsError", "key_hash_from_env"]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says which and what to do."""


def key_hash_from_env(env: dict[str, str] | os._Environ[str]) -> str:
    """SHA-256 hex of the API key: from ENGINE_KEY_HASH, or hashed from ENGINE_API_KEY."""
    key_hash = env.get("ENGINE_KEY_HASH", "").strip().lower()
    key = env.get("ENGINE_API_KEY", "")
    if key_hash:
        if len(key_hash) != 64 or any(c not in "0123456789abcdef" for c in key_hash):
            raise SettingsError("ENGINE_KEY_HASH must be the 64-character hex SHA-256 of the key")
        return key_hash
    if key:
        return hashlib.sha256(key.encode()).hexdigest()
    raise SettingsError("set ENGINE_API_KEY (or ENGINE_KEY_HASH) in the environment")


@dataclass(frozen=True)
class Settings:
    """Everything an Engine process needs to serve."""

    release: Release
    brain: Path
    host: str
    port: int
    key_hash: str
    drain_timeout: float = 25.0
    turn_ms: int = 50  # simulated model time of one turn, before the release's latency factor
    ad_key: str | None = None  # AD_ENCRYPTION_KEY: a restored brain needs the same one
    llm_outage_file: Path | None = None  # when this file exists, the LLM provider is "down"
    channel_ttl_s: int = 3 * 3600
    flush_interval_s: float = 1.0

    def key_matches(self, presented: str | None) -> bool:
        """Constant-time check of an X-Engine-Key header against the configured hash."""
        if not presented:
            return False
        digest = hashlib.sha256(presented.encode()).hexdigest()
        return hmac.compare_digest(digest, self.key_hash)

    @staticmethod
    def turn_ms_from(value: str | int | None) -> int:
        """Validate the simulated model time (20–200 ms per turn)."""
        ms = int(value) if value not in (None, "") else 50
        if not 20 <= ms <= 200:
            raise SettingsError(f"turn time must be between 20 and 200 ms, got {ms}")
        return ms
