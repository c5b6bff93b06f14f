"""The statistics behind `vaelab compare` (and, later, the sweep journal): small pure functions.

Everything here takes plain lists of numbers, one number per seed, so that any caller can
use it without knowing about run folders. The method is Welch's t-test: it does not assume
that two groups have the same spread, which matters because a change such as a higher
learning rate often makes runs less repeatable as well as better or worse on average.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from scipy import stats as _scipy_stats

METHOD = "Welch's t-test"
ALPHA = 0.05
CONFIDENCE = 0.95

# Metric names whose larger values are better. Everything else (loss, recon, kl, mse, ...) is
# treated as lower-is-better, which is the safe default for a training log.
HIGHER_IS_BETTER_MARKERS = ("psnr", "ssim", "active")


def higher_is_better(key: str) -> bool:
    """True for metrics where larger is better (PSNR, SSIM, active units); False for losses."""
    lowered = key.lower()
    return any(marker in lowered for marker in HIGHER_IS_BETTER_MARKERS)


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student t critical value, e.g. 4.303 for df=2 at 95%."""
    return float(_scipy_stats.t.ppf(0.5 + confidence / 2.0, df))


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Mean and t-based confidence interval of independent samples (one per seed).

    The interval is mean ± t_{(1+c)/2, n-1} · sd/√n with the sample sd (ddof=1). With one
    value there is no spread to estimate, so sd and the interval are None rather than 0.
    Returns {n, mean, sd, ci_low, ci_high}; mean is None when `values` is empty.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = math.fsum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch–Satterthwaite degrees of freedom for the difference of two means.

    df = (va/na + vb/nb)² / ((va/na)²/(na-1) + (vb/nb)²/(nb-1)), where va, vb are sample
    variances. Needs n_a, n_b >= 2 and at least one positive variance.
    """
    a, b = var_a / n_a, var_b / n_b
    return (a + b) ** 2 / (a * a / (n_a - 1) + b * b / (n_b - 1))


def compare_groups(a_values: Sequence[float], b_values: Sequence[float], higher_is_better: bool,
                   alpha: float = ALPHA, confidence: float = CONFIDENCE) -> dict:
    """Is group A different from group B? One value per seed in each; B is the reference.

    Returns a dict:
      delta          mean(A) - mean(B), in the metric's unit
      ci_low/high    the confidence interval of delta (Welch–Satterthwaite df), or None
      p              two-sided p-value of Welch's t-test (scipy.stats.ttest_ind, equal_var=False)
      df             the Welch–Satterthwaite degrees of freedom
      verdict        "better" / "worse" (A relative to B, using `higher_is_better`),
                     "no significant difference" (p >= alpha), or "not assessable"
      reason         why the verdict is "not assessable" (e.g. n=1), else None
      method, alpha, n_a, n_b, mean_a, mean_b

    With fewer than two values in a group there is no estimate of the noise, so the verdict is
    "not assessable" rather than a guess from the sign of delta.
    """
    a = [float(v) for v in a_values]
    b = [float(v) for v in b_values]
    summary_a, summary_b = mean_ci(a, confidence), mean_ci(b, confidence)
    result = {
        "method": METHOD, "alpha": alpha, "n_a": len(a), "n_b": len(b),
        "mean_a": summary_a["mean"], "mean_b": summary_b["mean"],
        "delta": None, "ci_low": None, "ci_high": None, "p": None, "df": None,
        "verdict": "not assessable", "reason": None,
    }
    if a and b:
        result["delta"] = summary_a["mean"] - summary_b["mean"]
    if len(a) < 2 or len(b) < 2:
        result["reason"] = (f"significance cannot be assessed with n={min(len(a), len(b))} in a group; "
                            "run at least 2 seeds per group (3 or more for a useful test)")
        return result
    var_a, var_b = summary_a["sd"] ** 2, summary_b["sd"] ** 2
    if var_a == 0.0 and var_b == 0.0:
        # Identical values in both groups (e.g. the same seed run twice): the test is undefined.
        result["reason"] = "every run in both groups has the same value, so there is no noise to test against"
        return result
    df = welch_df(var_a, len(a), var_b, len(b))
    se = math.sqrt(var_a / len(a) + var_b / len(b))
    half = t_quantile(df, confidence) * se
    p = float(_scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    result.update({"ci_low": result["delta"] - half, "ci_high": result["delta"] + half, "p": p, "df": df})
    if p < alpha:
        a_is_larger = result["delta"] > 0
        result["verdict"] = "better" if a_is_larger == higher_is_better else "worse"
    else:
        result["verdict"] = "no significant difference"
    return result


def format_number(value: Optional[float]) -> str:
    """Short, journal-style numbers: 1e-4, 5.8e4, 0.0123, 31.2; '—' for None."""
    if value is None:
        return "—"
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.4g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def curve_stats(series: Sequence[Sequence[tuple[int, Optional[float], float]]],
                confidence: float = CONFIDENCE) -> list[dict]:
    """Per-epoch mean and CI over replicate curves (one list of (epoch, time_s, value) per seed).

    Each epoch uses the seeds that reached it, so `n` can drop at the end of a group whose
    runs stopped at different epochs. `time_s` is the seeds' mean wall time at that epoch,
    for plotting the mean curve against time. Returns [{"epoch", "time_s", "n", "mean", "sd",
    "ci_low", "ci_high"}] sorted by epoch.
    """
    by_epoch: dict[int, list[tuple[Optional[float], float]]] = {}
    for points in series:
        for epoch, time_s, value in points:
            by_epoch.setdefault(epoch, []).append((time_s, value))
    out = []
    for epoch in sorted(by_epoch):
        times = [t for t, _ in by_epoch[epoch] if t is not None]
        summary = mean_ci([v for _, v in by_epoch[epoch]], confidence)
        out.append({"epoch": epoch, "time_s": sum(times) / len(times) if times else None, **summary})
    return out


def compare_to_reference(values: dict[str, Sequence[float]], higher_is_better: bool,
                         baseline: Optional[str] = "baseline") -> list[dict]:
    """Test every group against one reference group with `compare_groups`.

    `values` maps a group name to its per-seed values (groups without values are left out).
    The reference is `baseline` when present, else the group with the best mean: then each
    verdict says whether a group is significantly worse than the best one. Returns one
    `compare_groups` dict per other group, plus "group", "reference" and "reference_is".
    """
    candidates = {name: list(vals) for name, vals in values.items() if len(vals)}
    if len(candidates) < 2:
        return []
    if baseline in candidates:
        reference, why = baseline, "the baseline"
    else:
        means = {name: math.fsum(vals) / len(vals) for name, vals in candidates.items()}
        reference, why = (max if higher_is_better else min)(means, key=means.get), "the best mean"
    return [{"group": name, "reference": reference, "reference_is": why,
             **compare_groups(vals, candidates[reference], higher_is_better)}
            for name, vals in candidates.items() if name != reference]


# --------------------------------------------------------------------------------------------
# thresholds: when does a curve first cross a value, and who gets there first
# --------------------------------------------------------------------------------------------


def crosses(value: float, threshold: float, direction: str) -> bool:
    """`direction` is "<=" (losses: crossing means getting down to it) or ">=" (PSNR: up to it)."""
    return value <= threshold if direction == "<=" else value >= threshold


def first_crossing(points: Sequence[tuple[int, Optional[float], float]], threshold: float,
                   direction: str) -> Optional[dict]:
    """The first (epoch, time_s, value) point, in epoch order, that crosses `threshold`.

    Returns {"epoch", "time_s"} of that epoch's end, or None when the curve never crosses.
    """
    for epoch, time_s, value in sorted(points, key=lambda point: point[0]):
        if value is not None and crosses(value, threshold, direction):
            return {"epoch": epoch, "time_s": time_s}
    return None


def ahead(crossings: Sequence[Optional[dict]]) -> tuple[Optional[int], list[Optional[dict]]]:
    """Who crosses first, and how far ahead every crossing run is.

    The best is the earliest epoch, ties broken by the earlier time_s, then by order given.
    Each other run is compared with the best: `epochs` = best epoch - its epoch, so it is
    negative (behind) or zero. The best itself is compared with the runner-up, so its numbers
    say by how much it leads (positive), like the journal's "30 epochs ahead of the best run".
    Returns (index of the best or None, per run {"of": index, "epochs", "minutes"} or None;
    minutes is None where a time_s is missing).
    """
    def order(i: int) -> tuple:
        time_s = crossings[i]["time_s"]
        return (crossings[i]["epoch"], math.inf if time_s is None else time_s, i)

    ranked = sorted((i for i, c in enumerate(crossings) if c is not None), key=order)
    result: list[Optional[dict]] = [None] * len(crossings)
    if not ranked:
        return None, result
    best = ranked[0]
    for i in ranked:
        if i == best and len(ranked) == 1:
            continue  # nobody else crossed: nothing to be ahead of
        ref = ranked[1] if i == best else best
        mine, theirs = crossings[i], crossings[ref]
        minutes = None
        if mine["time_s"] is not None and theirs["time_s"] is not None:
            minutes = (theirs["time_s"] - mine["time_s"]) / 60.0
        result[i] = {"of": ref, "epochs": theirs["epoch"] - mine["epoch"], "minutes": minutes}
    return best, result
