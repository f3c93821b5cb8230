"""The comparisons a report states: the split it judges on, LSR − LoRA at matched and at small
budgets with scipy's Welch t interval and a verdict, and each method's Pareto front."""

from __future__ import annotations

import math
import statistics

from ..metrics import higher_is_better
from .collect import Config

REFERENCE_METHOD, PARTNER_METHOD = "lora", "lsr"  # each LoRA configuration against the LSR closest in size
CONFIDENCE = 0.95


def quality_split(configs: list[Config]) -> str:
    """``test`` when every run of every configuration has the metric on the labelled test split (at its
    best epoch's weights), else ``validation`` (the best validation metric): one split per table."""
    return "test" if configs and all(len(c.test_values()) == len(c.runs) for c in configs) else "validation"


def quality_values(c: Config, split: str) -> list[float]:
    return c.test_values() if split == "test" else c.values("best_metric")


def welch_interval(a: list[float], b: list[float], confidence: float = CONFIDENCE):
    """Difference of means mean(b) − mean(a) with its Welch t interval (unequal variances, scipy's
    ``ttest_ind(equal_var=False)``); the interval is None with fewer than two values on a side, and
    the point itself when neither side varies (scipy gives nan there: no spread, nothing to widen)."""
    from scipy import stats

    diff = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return diff, None
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return diff, (diff, diff)
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(confidence_level=confidence)
    return diff, (float(ci.low), float(ci.high))


def verdict(interval, higher: bool = True) -> str:
    """better / worse when the whole interval is on one side of 0 (for the partner), else tie."""
    if interval is None:
        return "n/a (needs ≥ 2 seeds each)"
    lo, hi = interval if higher else (-interval[1], -interval[0])
    return "better" if lo > 0 else "worse" if hi < 0 else "tie"


SMALL_BUDGET = 0.30  # "a fraction of LoRA's parameters": LSR at no more than 30% of each LoRA's size


def matched_budgets(configs: list[Config], metric: str) -> list[dict]:
    """For each LoRA configuration, the LSR configuration closest in adapter parameters (ratio; ties:
    the smaller), on the same base model, and LSR − LoRA on the report's split."""
    return _against_lora(configs, metric, lambda size, partner: (abs(math.log(partner / size)), partner))


def small_budgets(configs: list[Config], metric: str, fraction: float = SMALL_BUDGET) -> list[dict]:
    """For each LoRA configuration, the largest LSR configuration with at most ``fraction`` of its
    adapter parameters, on the same base model, and LSR − LoRA on the report's split."""
    return _against_lora(configs, metric, lambda size, partner: -partner,
                         admits=lambda size, partner: partner <= fraction * size)


def _against_lora(configs: list[Config], metric: str, rank, admits=lambda size, partner: True) -> list[dict]:
    """Each LoRA configuration against the admitted LSR configuration that ``rank`` (of the two
    sizes) puts first, with LSR − LoRA, its interval and the verdict on the report's split."""
    split = quality_split(configs)
    higher = higher_is_better(metric)
    refs = [c for c in configs if c.first.get("adaptation_type") == REFERENCE_METHOD]
    rows = []
    for ref in sorted(refs, key=lambda c: c.first.get("adapter_params") or 0):
        size = ref.first.get("adapter_params")
        if not size or not quality_values(ref, split):
            continue
        partners = [c for c in configs if c.first.get("adaptation_type") == PARTNER_METHOD
                    and c.first.get("model_name") == ref.first.get("model_name")
                    and (c.first.get("adapter_params") or 0) > 0 and quality_values(c, split)
                    and admits(size, c.first["adapter_params"])]
        if not partners:
            continue
        partner = min(partners, key=lambda c: rank(size, c.first["adapter_params"]))
        a, b = quality_values(ref, split), quality_values(partner, split)
        diff, interval = welch_interval(a, b)
        rows.append({"reference": ref, "partner": partner, "split": split, "ref_values": a, "partner_values": b,
                     "diff": diff, "interval": interval, "verdict": verdict(interval, higher)})
    return rows


def pareto(points: list[tuple[float, float]], higher: bool = True) -> list[tuple[float, float]]:
    """The non-dominated points (no other point has ≤ parameters and a better metric), by size."""
    sign = 1 if higher else -1
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * y > best:
            front.append((x, y))
            best = sign * y
    return front
