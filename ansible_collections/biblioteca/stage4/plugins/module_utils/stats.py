# -*- coding: utf-8 -*-
"""Statistics of latency samples, shared by the benchmark module, the gate's filter and the scripts.

One implementation of each figure, so that the benchmark, the gate and the workload report agree:
percentiles (linear interpolation, numpy's default), the summary of a query's samples, and
confidence intervals (Student's t for the mean, order statistics for the percentiles). The
two-sample tests of the gate (Mann-Whitney, Hodges-Lehmann) are here too.
"""
from __future__ import annotations

import math
from statistics import NormalDist, median


PERCENTILES = (50, 95, 99)


def percentile(sorted_samples, pct):
    """Percentile pct (0-100) of sorted samples, interpolated linearly like numpy's default."""
    if not sorted_samples:
        raise ValueError("percentile of no samples")
    rank = (len(sorted_samples) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_samples) - 1)
    return sorted_samples[low] + (rank - low) * (sorted_samples[high] - sorted_samples[low])


def summarize(samples_ms):
    """Latency statistics of a list of samples in ms (population standard deviation)."""
    ordered = sorted(samples_ms)
    count = len(ordered)
    mean = sum(ordered) / count
    stddev = math.sqrt(sum((value - mean) ** 2 for value in ordered) / count)
    return dict(
        calls=count,
        mean_ms=round(mean, 3),
        p50_ms=round(percentile(ordered, 50), 3),
        p95_ms=round(percentile(ordered, 95), 3),
        p99_ms=round(percentile(ordered, 99), 3),
        min_ms=ordered[0],
        max_ms=ordered[-1],
        stddev_ms=round(stddev, 3),
        samples_ms=list(samples_ms),
    )


def regularized_beta(x, a, b):
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # The continued fraction converges fast only on this side of the mean.
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    tiny = 1e-300
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x)) / a
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * fraction


def student_t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(probability, df):
    """The t such that P(T <= t) = probability (0.5 < probability < 1), by bisection."""
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < probability:
        low, high = high, high * 2.0
    while high - low > 1e-12 * high:
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def mean_interval(samples, level):
    """[low, high] confidence interval of the mean (Student's t), None under two samples."""
    count = len(samples)
    if count < 2:
        return None
    mean = sum(samples) / count
    deviation = math.sqrt(sum((value - mean) ** 2 for value in samples) / (count - 1))
    margin = student_t_quantile((1.0 + level) / 2.0, count - 1) * deviation / math.sqrt(count)
    return [round(mean - margin, 3), round(mean + margin, 3)]


def binomial_pmf(count, probability):
    """P(B = k) for k = 0..count, B binomial(count, probability), computed in logs."""
    log_p, log_q = math.log(probability), math.log1p(-probability)
    log_n = math.lgamma(count + 1)
    return [math.exp(log_n - math.lgamma(k + 1) - math.lgamma(count - k + 1)
                     + k * log_p + (count - k) * log_q) for k in range(count + 1)]


def order_statistic_ranks(count, quantile, level):
    """1-based ranks (low, high) of the order statistics bounding the quantile (0 < q < 1).

    Distribution-free: the quantile lies in [X(low), X(high)] with probability
    P(low <= B < high), B ~ binomial(count, quantile), and each tail outside is at most
    (1 - level) / 2 (the equal-tailed choice). None when count is too small for the level.
    """
    pmf = binomial_pmf(count, quantile)
    tail = (1.0 - level) / 2.0
    below, low = 0.0, None  # below = P(B <= rank - 1)
    for rank in range(1, count + 1):
        below += pmf[rank - 1]
        if below > tail:
            break
        low = rank
    above, high = 0.0, None  # above = P(B >= rank)
    for rank in range(count, 0, -1):
        above += pmf[rank]
        if above > tail:
            break
        high = rank
    if low is None or high is None:
        return None
    return low, high


def confidence_intervals(samples_ms, level):
    """mean_ci_ms, p50_ci_ms, p95_ci_ms and p99_ci_ms of the samples; None where too few."""
    ordered = sorted(samples_ms)
    intervals = dict(mean_ci_ms=mean_interval(ordered, level))
    for pct in PERCENTILES:
        ranks = order_statistic_ranks(len(ordered), pct / 100.0, level)
        intervals["p%d_ci_ms" % pct] = (None if ranks is None
                                        else [ordered[ranks[0] - 1], ordered[ranks[1] - 1]])
    return intervals


def mann_whitney_slower_p(reference, current):
    """One-sided p-value of "current is not slower than reference" (normal approximation, tie corrected)."""
    n1, n2 = len(reference), len(current)
    if n1 == 0 or n2 == 0:
        return 1.0
    ranked = sorted([(v, 0) for v in reference] + [(v, 1) for v in current])
    ranks = [0.0] * len(ranked)
    tie_term = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2.0 + 1
        tied = j - i + 1
        tie_term += tied ** 3 - tied
        i = j + 1
    rank_sum_current = sum(r for r, (_, group) in zip(ranks, ranked) if group == 1)
    u_current = rank_sum_current - n2 * (n2 + 1) / 2.0
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0
    z = (u_current - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def hodges_lehmann(reference, current, level):
    """Shift of current over reference and its confidence interval at `level` (two-sided).

    The estimate is the median of the n1*n2 differences current[j] - reference[i]. The interval's
    ends are the differences of rank c and n1*n2+1-c, where c is the Mann-Whitney critical value
    (normal approximation, fine from about ten samples a side). The bounds are None when there are
    too few samples for the level.
    """
    differences = sorted(c - r for c in current for r in reference)
    count = len(differences)
    if not count:
        return None, None, None
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    critical = math.floor(count / 2 - z * math.sqrt(len(reference) * len(current) * (len(reference) + len(current) + 1) / 12))
    if critical < 1:
        return median(differences), None, None
    return median(differences), differences[critical - 1], differences[count - critical]
