"""The statistics behind the verdict: exact error-count tests, a rank test for latency, percentiles
and time windows. Pure functions on plain numbers, no dependencies beyond the standard library.

Every p-value here is one-sided and answers "is the new version worse?": small means worse."""

from __future__ import annotations

import math
from typing import Protocol, Sequence, TypeVar

__all__ = [
    "binomial_greater", "fisher_greater", "mann_whitney_greater", "percentile", "windows", "Timed",
]

# Terms of a tail sum smaller than this fraction of the largest one no longer change a double.
_NEGLIGIBLE = math.log(1e-18)


class Timed(Protocol):
    """Anything with a timestamp (a request, a probe)."""

    @property
    def ts(self) -> float: ...


T = TypeVar("T", bound=Timed)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


class _LogPmf(Protocol):
    def __call__(self, x: int) -> float: ...


def _tail(first: int, last: int, log_pmf: _LogPmf) -> float:
    """Sum pmf(first..last) in log space; stops once the (unimodal) terms have become negligible."""
    if first > last:
        return 0.0
    terms: list[float] = []
    peak = -math.inf
    for x in range(first, last + 1):
        term = log_pmf(x)
        peak = max(peak, term)
        terms.append(term)
        if term < peak + _NEGLIGIBLE:  # past the mode and falling: the rest cannot matter
            break
    top = max(terms)
    return min(1.0, math.exp(top + math.log(sum(math.exp(t - top) for t in terms))))


def binomial_greater(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the exact one-sided p-value of k errors in n at rate p."""
    if not 0.0 <= p <= 1.0 or n < 0:
        raise ValueError(f"binomial_greater needs 0 <= p <= 1 and n >= 0 (got p={p}, n={n})")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    return _tail(k, n, lambda x: _log_comb(n, x) + x * lp + (n - x) * lq)


def fisher_greater(errors: int, n: int, base_errors: int, base_n: int) -> float:
    """One-sided Fisher exact test: p-value that errors/n is a higher rate than base_errors/base_n.

    Unlike a binomial test against the baseline's rate, it accounts for the baseline being a sample
    too (a baseline with 0 errors does not make every error significant)."""
    if not (0 <= errors <= n and 0 <= base_errors <= base_n):
        raise ValueError(f"fisher_greater needs 0 <= errors <= n (got {errors}/{n}, {base_errors}/{base_n})")
    total, failed = n + base_n, errors + base_errors
    if n == 0 or failed == 0:
        return 1.0
    # X = errors among the n current requests, given `failed` errors among all: hypergeometric.
    norm = _log_comb(total, n)
    return _tail(errors, min(failed, n),
                 lambda x: _log_comb(failed, x) + _log_comb(total - failed, n - x) - norm)


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided Mann–Whitney U: p-value that values in `x` tend to be larger than those in `y`.

    Normal approximation with tie correction and continuity correction (as scipy's
    `mannwhitneyu(x, y, alternative="greater", method="asymptotic")`). All values tied: 1.0."""
    if not x or not y:
        raise ValueError("mann_whitney_greater needs two non-empty samples")
    nx, ny = len(x), len(y)
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    rank_sum_x, ties, i = 0.0, 0.0, 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        midrank = (i + j) / 2 + 1
        rank_sum_x += midrank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    u = rank_sum_x - nx * (nx + 1) / 2
    n = nx + ny
    variance = nx * ny / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0
    z = (u - nx * ny / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile needs 0 <= q <= 100 (got {q})")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def windows(samples: Sequence[T], start: float, width: float, end: float | None = None) -> list[list[T]]:
    """Split samples into consecutive windows [start + i*width, start + (i+1)*width), oldest first.

    Windows run up to `end` (default: the last sample), empty ones included; samples outside
    [start, end) are left out. The last window is shorter when end - start is not a multiple of width."""
    if width <= 0:
        raise ValueError(f"window width must be positive (got {width})")
    if end is None:
        last = max((s.ts for s in samples if s.ts >= start), default=None)
        count = 0 if last is None else int((last - start) // width) + 1
        end = math.inf
    else:
        count = max(0, math.ceil((end - start) / width - 1e-9))  # tolerate float noise: 180/60 is 3
    out: list[list[T]] = [[] for _ in range(count)]
    for sample in samples:
        if start <= sample.ts < end and count:
            out[min(int((sample.ts - start) // width), count - 1)].append(sample)
    return out
