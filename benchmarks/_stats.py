"""Summary statistics the benchmark and reproduction reports share (stdlib `statistics`; scipy only for quantiles)."""
import math
import statistics
from typing import Sequence, Tuple

__all__ = ['mean_std', 't_quantile_975']


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (nan for the deviation of fewer than two values)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def t_quantile_975(n: int) -> float:
    """The two-sided 95 % Student-t quantile for n - 1 degrees of freedom (nan below two samples)."""
    if n < 2:
        return math.nan
    from scipy.stats import t
    return float(t.ppf(0.975, n - 1))
