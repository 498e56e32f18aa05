"""Small-sample statistics for the ablation tables: Student-t confidence intervals of a mean and
of a paired difference (no SciPy needed; the t quantile is exact for integer degrees of freedom)."""
import math
import statistics
from typing import Dict, NamedTuple, Optional, Sequence


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` >= 1 degrees of freedom (closed form for integer df:
    Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        term, series = 1.0, 0.0
        if df > 1:
            series = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * k) / (2 * k + 1)
                series += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    term, series = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        series += term
    return math.sin(theta) * series


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| < t) = ``confidence`` for ``df`` degrees of freedom (e.g. 0.95, 4 -> 2.776)."""
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"need df >= 1 and 0 < confidence < 1, got {df}, {confidence}")
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < confidence:
        hi *= 2
    for _ in range(200):  # bisection to double precision
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


class Interval(NamedTuple):
    """Mean, sample standard deviation, half-width of the confidence interval, sample size."""

    mean: float
    std: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values`` (NaNs dropped). One value: std 0 and an
    infinite half-width (nothing is resolved by one run); none: all NaN."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if n == 1:
        return Interval(vals[0], 0.0, math.inf, 1)
    std = statistics.stdev(vals)
    return Interval(statistics.fmean(vals), std, t_quantile(confidence, n - 1) * std / math.sqrt(n), n)


def paired_difference(values: Dict[int, float], reference: Dict[int, float], confidence: float = 0.95) -> Interval:
    """Interval of the mean of ``values[s] - reference[s]`` over the seeds ``s`` both have (the same
    seed gives both runs the same initialisation and data order, so the pairs share noise)."""
    seeds = sorted(set(values) & set(reference))
    return mean_ci([values[s] - reference[s] for s in seeds], confidence)


def verdict(diff: Interval) -> str:
    """'better' / 'worse' when the interval of a difference excludes 0, else 'not resolved'."""
    if diff.n >= 2 and diff.low > 0:
        return "better"
    if diff.n >= 2 and diff.high < 0:
        return "worse"
    return "not resolved"


def seeds_for_half_width(std: float, target: float, confidence: float = 0.95, most: int = 1000) -> Optional[int]:
    """The fewest seeds n >= 2 whose t interval of the mean, at the sample standard deviation
    ``std`` seen so far, has a half-width <= ``target``: t(confidence, n - 1) · std / √n <= target
    (e.g. std 2, target 1 -> 18). None when even ``most`` seeds would not do, or std is NaN."""
    if math.isnan(std) or target <= 0:
        return None
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    start = max(2, math.floor((z * std / target) ** 2))  # t > z for every df: no fewer seeds than this
    for n in range(start, most + 1):
        if t_quantile(confidence, n - 1) * std / math.sqrt(n) <= target:
            return n
    return None
