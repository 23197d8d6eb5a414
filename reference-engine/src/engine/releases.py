"""The catalogue of reference Engine releases: schema head, known bug and changelog of each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Bug = Literal["none", "errors", "latency", "health", "eval", "crash", "drain"]

__all__ = ["Bug", "Release", "RELEASES", "UnknownRelease", "get_release", "POISONED_TASK_ID"]

# A task whose turns fail on every version: a poisoned request, not a broken release.
POISONED_TASK_ID = "task-poisoned"


class UnknownRelease(LookupError):
    """Raised when a version is not in the catalogue."""


@dataclass(frozen=True)
class Release:
    """One version of the reference Engine."""

    version: str
    head: int  # highest migration id this release knows and applies
    bug: Bug = "none"
    summary: str = ""
    changes: tuple[str, ...] = ()
    # Behaviour changes the release announces, so rollback tooling does not count them against it.
    expected_changes: dict[str, list[str]] = field(default_factory=dict)
    latency_factor: float = 1.0  # multiplies the simulated model time of a turn

    @property
    def broken(self) -> bool:
        """True for the deliberately broken builds."""
        return self.bug != "none"

    def changelog(self) -> dict[str, object]:
        """The release's changelog entry as data."""
        return {
            "version": self.version,
            "summary": self.summary,
            "changes": list(self.changes),
            "migration_head": self.head,
            "expected_changes": {
                "metrics": list(self.expected_changes.get("metrics", [])),
                "eval_cases": list(self.expected_changes.get("eval_cases", [])),
            },
        }


_DEEPER_RETRIEVAL = (
    "Turns run a second retrieval pass over long-term memory: expect turn latency about 40% "
    "higher than 2.3.x."
)
_V240_CHANGES = (
    "Episodes carry an optional importance score; memories can be tagged (additive migration 0003).",
    "Knowledge store rebuilt: the fact text column is now `fact` and records its extractor "
    "(forward-only migration 0004: 2.3.x cannot read a 2.4.0 brain).",
    _DEEPER_RETRIEVAL,
)
_V240_EXPECTED = {"metrics": ["latency"], "eval_cases": []}


def _broken(bug: Bug, summary: str, latency_factor: float = 1.4) -> Release:
    # A broken build is 2.4.0 plus one bug: it announces 2.4.0's slower turns, except the build whose
    # bug is the latency itself (six times slower is not the 40% its changelog would announce).
    expected = _V240_EXPECTED if latency_factor == 1.4 else {}
    return Release(
        version=f"2.4.0-{bug}",
        head=4,
        bug=bug,
        summary=f"Deliberately broken build of 2.4.0: {summary}",
        changes=_V240_CHANGES,
        expected_changes=expected,
        latency_factor=latency_factor,
    )


RELEASES: dict[str, Release] = {
    r.version: r
    for r in [
        Release("2.3.0", head=2, summary="Baseline release: core brain and MCP call ledger."),
        Release(
            "2.3.1",
            head=2,
            summary="Patch: same schema as 2.3.0; image-only rollback between them is safe.",
            changes=("Faster episode search.",),
        ),
        Release(
            "2.4.0",
            head=4,
            summary="Minor release with a forward-only brain migration.",
            changes=_V240_CHANGES,
            expected_changes=_V240_EXPECTED,
            latency_factor=1.4,
        ),
        Release(
            "2.4.1",
            head=5,
            summary="Patch: additive migration only; 2.4.0 keeps working on a 2.4.1 brain.",
            changes=("Conversations remember their channel (additive migration 0005).",),
            expected_changes=_V240_EXPECTED,
            latency_factor=1.4,
        ),
        _broken("errors", "about 30% of turns fail with 500 INTERNAL_ERROR."),
        _broken("latency", "turns take about six times longer.", latency_factor=6.0),
        _broken("health", "/health reports asset_directory in error (503)."),
        _broken("eval", "knowledge extraction swaps subject and object; only evals notice."),
        _broken("crash", "applies its migrations, then crashes at boot."),
        _broken("drain", "ignores SIGTERM: no drain, only SIGKILL stops it."),
    ]
}


def get_release(version: str) -> Release:
    """Return the release called `version`, or raise UnknownRelease naming the known ones."""
    try:
        return RELEASES[version]
    except KeyError:
        known = ", ".join(RELEASES)
        raise UnknownRelease(f"unknown release {version!r}; known releases: {known}") from None
