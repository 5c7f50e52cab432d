"""Confidence intervals for success rates.

Success is a binomial outcome and evaluations use tens of episodes per task, where the normal
approximation (p ± 1.96·sqrt(p(1-p)/n)) gives intervals outside [0, 1] and a zero width at 0 % or
100 %. The Wilson score interval behaves at those edges; Newcombe's method builds the interval of a
difference of two rates from the two Wilson intervals.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    center = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # Clamp rounding noise so the interval always contains the observed rate.
    return max(0.0, min(center - half, p)), min(1.0, max(center + half, p))


def difference_interval(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, z: float = Z_95
) -> tuple[float, float, float]:
    """Rate difference b - a with Newcombe's hybrid score interval (method 10): (delta, low, high)."""
    if not trials_a or not trials_b:
        raise ValueError("both rates need at least one trial")
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    low_a, high_a = wilson_interval(successes_a, trials_a, z)
    low_b, high_b = wilson_interval(successes_b, trials_b, z)
    delta = p_b - p_a
    low = delta - math.sqrt((p_b - low_b) ** 2 + (high_a - p_a) ** 2)
    high = delta + math.sqrt((high_b - p_b) ** 2 + (p_a - low_a) ** 2)
    return delta, max(-1.0, low), min(1.0, high)
