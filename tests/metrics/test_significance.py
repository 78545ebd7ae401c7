"""Paired and unpaired t-tests against closed forms and scipy.stats."""

import math

import numpy as np
import pytest
from scipy import stats

from lapjax.metrics import significance as sig

# Fixed samples: per-image IoUs of two methods (paired), per-seed
# accuracies of two variants (unpaired, unequal sizes and spreads).
A = np.array([0.41, 0.35, 0.52, 0.47, 0.38, 0.44, 0.50, 0.29, 0.46, 0.40])
B = np.array([0.33, 0.36, 0.41, 0.40, 0.30, 0.45, 0.39, 0.27, 0.35, 0.38])
G1 = np.array([0.9458, 0.9471, 0.9440, 0.9502, 0.9463])
G2 = np.array([0.9488, 0.9495, 0.9479, 0.9512, 0.9470, 0.9530, 0.9391])


def test_paired_closed_form():
  # d = (1, 2, 3): mean 2, s_d = 1, SE = 1 / sqrt(3), t = 2 sqrt(3), 2 df;
  # with 2 df, P(|T| > t) = 1 - t / sqrt(t^2 + 2).
  r = sig.paired_t_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
  t = 2 * math.sqrt(3)
  assert r["n"] == 3 and r["df"] == 2
  assert r["mean_difference"] == pytest.approx(2.0)
  assert r["standard_error"] == pytest.approx(1 / math.sqrt(3))
  assert r["t"] == pytest.approx(t)
  assert r["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
  one_sided = sig.paired_t_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0],
                                alternative="greater")
  assert one_sided["p_value"] == pytest.approx(r["p_value"] / 2)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_matches_scipy(alternative):
  r = sig.paired_t_test(A, B, alternative=alternative, confidence=0.9)
  ref = stats.ttest_rel(A, B, alternative=alternative)
  ci = ref.confidence_interval(confidence_level=0.9)
  assert r["t"] == pytest.approx(ref.statistic, rel=1e-12)
  assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
  assert r["df"] == ref.df
  if alternative == "two-sided":      # SciPy's one-sided intervals are
    assert r["ci_low"] == pytest.approx(ci.low, rel=1e-9)   # half-open
    assert r["ci_high"] == pytest.approx(ci.high, rel=1e-9)
  assert r["mean_a"] == pytest.approx(A.mean())
  assert r["mean_b"] == pytest.approx(B.mean())


@pytest.mark.parametrize("equal_var", [True, False])
@pytest.mark.parametrize("alternative", ["two-sided", "less"])
def test_unpaired_matches_scipy(equal_var, alternative):
  r = sig.unpaired_t_test(G1, G2, equal_var=equal_var,
                          alternative=alternative)
  ref = stats.ttest_ind(G1, G2, equal_var=equal_var, alternative=alternative)
  assert r["t"] == pytest.approx(ref.statistic, rel=1e-12)
  assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
  assert r["df"] == pytest.approx(ref.df, rel=1e-12)
  if alternative == "two-sided":
    ci = ref.confidence_interval()
    assert r["ci_low"] == pytest.approx(ci.low, rel=1e-9)
    assert r["ci_high"] == pytest.approx(ci.high, rel=1e-9)
  assert (r["n_a"], r["n_b"]) == (5, 7)


def test_nan_values_are_dropped_and_counted():
  a, b = A.copy(), B.copy()
  a[2], b[5] = np.nan, np.nan
  r = sig.paired_t_test(a, b)
  keep = np.ones(len(A), bool)
  keep[[2, 5]] = False
  ref = stats.ttest_rel(A[keep], B[keep])
  assert (r["n"], r["n_dropped"]) == (8, 2)
  assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
  u = sig.unpaired_t_test(a, b)
  assert (u["n_a"], u["n_b"], u["n_dropped"]) == (9, 9, 2)
  assert u["p_value"] == pytest.approx(stats.ttest_ind(
      a[~np.isnan(a)], b[~np.isnan(b)]).pvalue, rel=1e-9)


def test_degenerate_samples():
  shift = sig.paired_t_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
  assert shift["t"] == math.inf and shift["p_value"] == 0.0
  same = sig.paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
  assert math.isnan(same["t"]) and math.isnan(same["p_value"])
  single = sig.paired_t_test([1.0], [0.0])
  assert single["n"] == 1 and math.isnan(single["p_value"])
  assert math.isnan(sig.unpaired_t_test([1.0], [0.0, 1.0])["p_value"])


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match="same length"):
    sig.paired_t_test([1.0, 2.0], [1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match="1-D"):
    sig.paired_t_test(np.ones((2, 2)), np.ones((2, 2)))
  with pytest.raises(ValueError, match="alternative"):
    sig.paired_t_test(A, B, alternative="bigger")
  with pytest.raises(ValueError, match="confidence"):
    sig.unpaired_t_test(G1, G2, confidence=95)


def test_format_p_value():
  assert sig.format_p_value(0.0004) == "p < 0.001"
  assert sig.format_p_value(0.0123) == "p = 0.012"
  assert sig.format_p_value(float("nan")) == "p n/a"


def test_format_comparison():
  paired = sig.paired_t_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
  se = 100 / math.sqrt(3)
  assert sig.format_comparison(paired, scale=100) == (
      f"+200.0 ± {se:.1f} (p = {paired['p_value']:.3f}, n=3)")
  unpaired = sig.unpaired_t_test(G1, G2)
  cell = sig.format_comparison(unpaired, scale=100, digits=2)
  assert cell.startswith(f"{100 * (G1.mean() - G2.mean()):+.2f} ± ")
  assert cell.endswith(", n=5+7)")
  assert sig.format_comparison(sig.paired_t_test([1.0], [0.0])) == (
      "+1.0 ± n/a (p n/a, n=1)")
