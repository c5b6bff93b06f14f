"""The statistics behind compare (and the sweep journal): checked against hand computations and scipy."""

import math

import pytest
from scipy import stats as scipy_stats

from vaelab.experiments import stats


def test_mean_ci_matches_hand_computation():
    # [1, 2, 3]: mean 2, sd 1, t(0.975, df=2) = 4.302652729911275 -> half-width 4.3027 / sqrt(3)
    result = stats.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert result["n"] == 3 and result["mean"] == pytest.approx(2.0) and result["sd"] == pytest.approx(1.0)
    assert result["ci_low"] == pytest.approx(2.0 - half) and result["ci_high"] == pytest.approx(2.0 + half)


def test_mean_ci_with_one_value_has_no_interval():
    assert stats.mean_ci([5.0]) == {"n": 1, "mean": 5.0, "sd": None, "ci_low": None, "ci_high": None}
    assert stats.mean_ci([])["mean"] is None


def test_welch_matches_scipy_and_hand_computation():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    result = stats.compare_groups(a, b, higher_is_better=False)
    # By hand: means 2.5 and 6, variances 5/3 and 10, se^2 = (5/3)/4 + 10/5 = 29/12.
    se2 = (5 / 3) / 4 + 10 / 5
    df = se2 ** 2 / (((5 / 3) / 4) ** 2 / 3 + (10 / 5) ** 2 / 4)
    assert df == pytest.approx(5.5208, abs=1e-4)
    assert result["df"] == pytest.approx(df)
    assert result["delta"] == pytest.approx(-3.5)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(se2)
    assert result["ci_low"] == pytest.approx(-3.5 - half) and result["ci_high"] == pytest.approx(-3.5 + half)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert result["p"] == pytest.approx(reference.pvalue)
    # t = -3.5 / sqrt(29/12) = -2.2514; the two-sided p at df 5.52 is just under 0.07
    assert reference.statistic == pytest.approx(-2.2514, abs=1e-4)
    assert result["verdict"] == "no significant difference"
    assert result["method"] == "Welch's t-test" and (result["n_a"], result["n_b"]) == (4, 5)
    # The CI and the test agree: p >= 0.05 exactly when the 95% CI contains 0.
    assert result["ci_low"] < 0 < result["ci_high"]


@pytest.mark.parametrize("higher_is_better, verdict", [(False, "better"), (True, "worse")])
def test_verdict_follows_the_metric_direction(higher_is_better, verdict):
    lower, higher = [1.0, 1.1, 0.9], [2.0, 2.1, 1.9]
    result = stats.compare_groups(lower, higher, higher_is_better)
    assert result["p"] < 0.05 and result["ci_high"] < 0
    assert result["verdict"] == verdict


def test_one_seed_is_not_assessable_rather_than_a_guess():
    result = stats.compare_groups([1.0], [2.0, 2.1, 1.9], higher_is_better=False)
    assert result["verdict"] == "not assessable"
    assert "n=1" in result["reason"]
    assert result["delta"] == pytest.approx(-1.0)
    assert result["p"] is None and result["ci_low"] is None


def test_identical_values_are_not_assessable():
    result = stats.compare_groups([1.0, 1.0], [1.0, 1.0], higher_is_better=False)
    assert result["verdict"] == "not assessable" and result["p"] is None


def test_direction_of_metrics():
    assert stats.higher_is_better("val_psnr") and stats.higher_is_better("ssim")
    assert not stats.higher_is_better("val_recon") and not stats.higher_is_better("train_kl")


def test_first_crossing_and_who_is_ahead():
    a = [(1, 60.0, 3e5), (2, 120.0, 2e5), (3, 180.0, 1.2e5), (4, 240.0, 0.9e5)]
    b = [(1, 90.0, 2e5), (2, 180.0, 0.95e5), (3, 270.0, 0.8e5)]
    never = [(1, 60.0, 5e5), (2, 120.0, 4e5)]
    crossings = [stats.first_crossing(points, 1e5, "<=") for points in (a, b, never)]
    assert crossings == [{"epoch": 4, "time_s": 240.0}, {"epoch": 2, "time_s": 180.0}, None]
    best, leads = stats.ahead(crossings)
    assert best == 1
    assert leads[1] == {"of": 0, "epochs": 2, "minutes": pytest.approx(1.0)}  # the best leads the runner-up
    assert leads[0] == {"of": 1, "epochs": -2, "minutes": pytest.approx(-1.0)}  # the others trail the best
    assert leads[2] is None
    assert stats.first_crossing([(1, 1.0, 20.0), (2, 2.0, 25.0)], 25.0, ">=") == {"epoch": 2, "time_s": 2.0}


def test_same_epoch_is_decided_by_time():
    crossings = [{"epoch": 3, "time_s": 200.0}, {"epoch": 3, "time_s": 150.0}]
    best, leads = stats.ahead(crossings)
    assert best == 1 and leads[1]["epochs"] == 0 and leads[1]["minutes"] == pytest.approx(50 / 60)


def test_format_number_is_journal_style():
    assert [stats.format_number(v) for v in (1e-4, 5e-5, 5.8e4, 1e5, 400.0, 31.25, None)] == \
        ["1e-4", "5e-5", "5.8e4", "1e5", "400", "31.25", "—"]
