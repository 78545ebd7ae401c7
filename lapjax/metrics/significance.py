"""Student t-tests for the comparisons of a study (paper 000's tests).

The LAP paper compares attribution methods on the same images and models
with a **paired t-test** (IoU and SRG of LAP against every other method,
"p-value <= 0.001 in a paired t-test", Sec. 4 and App. D.2.2) and compares
independently trained models with an **unpaired (Student) t-test**
(classification performance of LAP-extended against vanilla models, Tab. 1,
"p-value <= 0.05 in an unpaired t-test"). Both are here, as host-side
NumPy functions of per-image or per-seed values (a handful to a few thousand
numbers: nothing to jit), returning what a study table prints: the sample
sizes and means, the mean difference, its standard error, the t statistic,
the degrees of freedom, the p-value and a confidence interval.

The t distribution's tails come from ``scipy.special.stdtr`` (regularised
incomplete beta function); the statistics match ``scipy.stats.ttest_rel``
and ``scipy.stats.ttest_ind`` (tested on fixed samples). Undefined values
(NaN) are dropped, pairwise for the paired test, and counted in
``n_dropped``; with fewer than two values per sample the test is undefined
and its numbers are NaN. A zero standard error gives ``t = +-inf``, ``p =
0`` when the means differ and NaN when they do not, as SciPy does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jax.typing import ArrayLike
from scipy import special

ALTERNATIVES = ("two-sided", "greater", "less")


def _p_value(t: float, df: float, alternative: str) -> float:
  if alternative not in ALTERNATIVES:
    raise ValueError(f"alternative must be one of {ALTERNATIVES}; got "
                     f"{alternative!r}")
  if math.isnan(t) or math.isnan(df):
    return math.nan
  if alternative == "greater":               # P(T >= t)
    return float(special.stdtr(df, -t))
  if alternative == "less":                  # P(T <= t)
    return float(special.stdtr(df, t))
  return float(min(1.0, 2 * special.stdtr(df, -abs(t))))


def _t_summary(difference: float, se: float, df: float, *,
               alternative: str, confidence: float) -> dict[str, float]:
  """t, p and the confidence interval of ``difference`` from its SE."""
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1); got {confidence}")
  if math.isnan(se) or math.isnan(df):
    t = math.nan
  elif se > 0:
    t = difference / se
  else:                                     # no spread: SciPy's convention
    t = math.copysign(math.inf, difference) if difference else math.nan
  if math.isnan(df):
    half = math.nan
  else:
    half = float(special.stdtrit(df, 0.5 + confidence / 2)) * se
  return {"t": float(t), "p_value": _p_value(t, df, alternative),
          "ci_low": difference - half, "ci_high": difference + half}


def _sample(values: ArrayLike, name: str) -> np.ndarray:
  v = np.asarray(values, np.float64)
  if v.ndim != 1:
    raise ValueError(f"{name} must be a 1-D sample; got shape {v.shape}")
  return v


def paired_t_test(a: ArrayLike, b: ArrayLike, *,
                  alternative: str = "two-sided",
                  confidence: float = 0.95) -> dict[str, Any]:
  r"""Paired t-test of ``mean(a - b) = 0`` (paper 000's method comparisons).

  With :math:`d_i = a_i - b_i` over the :math:`n` pairs where both are
  defined,

  .. math::
    \bar d = \frac{1}{n} \sum_i d_i, \quad
    \mathrm{SE} = \frac{s_d}{\sqrt n}, \quad
    s_d^2 = \frac{1}{n - 1} \sum_i (d_i - \bar d)^2, \quad
    t = \bar d / \mathrm{SE},

  and :math:`t` follows Student's t with :math:`n - 1` degrees of freedom
  under the null hypothesis. ``alternative='greater'`` tests
  :math:`\bar d > 0` (``a`` better when higher is better).

  Args:
    a: ``[n]`` values of the first method (per image or per seed).
    b: ``[n]`` values of the second, paired with ``a``.
    alternative: ``'two-sided'``, ``'greater'`` or ``'less'``.
    confidence: level of the interval ``[ci_low, ci_high]`` of the mean
      difference.

  Returns:
    ``{'n', 'n_dropped', 'mean_a', 'mean_b', 'mean_difference',
    'standard_error', 't', 'df', 'p_value', 'ci_low', 'ci_high'}``.

  References:
    Student (1908), "The probable error of a mean"; paper 000 (LAP), Sec. 4
    and App. D.2.2.
  """
  a, b = _sample(a, "a"), _sample(b, "b")
  if a.shape != b.shape:
    raise ValueError(f"a paired test needs samples of the same length; got "
                     f"{a.shape[0]} and {b.shape[0]}")
  ok = ~(np.isnan(a) | np.isnan(b))
  a, b = a[ok], b[ok]
  n = int(a.size)
  d = a - b
  mean_d = float(d.mean()) if n else math.nan
  se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
  df = float(n - 1) if n > 1 else math.nan
  return {"n": n, "n_dropped": int((~ok).sum()),
          "mean_a": float(a.mean()) if n else math.nan,
          "mean_b": float(b.mean()) if n else math.nan,
          "mean_difference": mean_d, "standard_error": se, "df": df,
          **_t_summary(mean_d, se, df, alternative=alternative,
                       confidence=confidence)}


def unpaired_t_test(a: ArrayLike, b: ArrayLike, *, equal_var: bool = True,
                    alternative: str = "two-sided",
                    confidence: float = 0.95) -> dict[str, Any]:
  r"""Unpaired t-test of ``mean(a) = mean(b)`` (paper 000, Tab. 1).

  Student's test (``equal_var=True``, the paper's "unpaired t-test" and
  SciPy's default) pools the variances:

  .. math::
    s_p^2 = \frac{(n_a - 1) s_a^2 + (n_b - 1) s_b^2}{n_a + n_b - 2}, \quad
    \mathrm{SE} = s_p \sqrt{1/n_a + 1/n_b}, \quad
    \nu = n_a + n_b - 2;

  Welch's (``equal_var=False``) uses
  :math:`\mathrm{SE}^2 = s_a^2/n_a + s_b^2/n_b` and the
  Welch-Satterthwaite :math:`\nu`. Then :math:`t = (\bar a - \bar b) /
  \mathrm{SE}` against Student's t with :math:`\nu` degrees of freedom.

  Args:
    a: ``[n_a]`` values of the first group (e.g. one per seed).
    b: ``[n_b]`` values of the second group.
    equal_var: Student's pooled test (True) or Welch's (False).
    alternative: ``'two-sided'``, ``'greater'`` (``mean(a) > mean(b)``) or
      ``'less'``.
    confidence: level of the interval of the difference of the means.

  Returns:
    ``{'n_a', 'n_b', 'n_dropped', 'mean_a', 'mean_b', 'mean_difference',
    'standard_error', 't', 'df', 'p_value', 'ci_low', 'ci_high'}``.

  References:
    Student (1908); Welch (1947), "The generalization of 'Student's'
    problem when several different population variances are involved".
  """
  a, b = _sample(a, "a"), _sample(b, "b")
  dropped = int(np.isnan(a).sum() + np.isnan(b).sum())
  a, b = a[~np.isnan(a)], b[~np.isnan(b)]
  na, nb = int(a.size), int(b.size)
  mean_a = float(a.mean()) if na else math.nan
  mean_b = float(b.mean()) if nb else math.nan
  diff = mean_a - mean_b
  if na < 2 or nb < 2:
    se = df = math.nan
  else:
    va, vb = float(a.var(ddof=1)), float(b.var(ddof=1))
    if equal_var:
      df = float(na + nb - 2)
      pooled = ((na - 1) * va + (nb - 1) * vb) / df
      se = math.sqrt(pooled * (1 / na + 1 / nb))
    else:
      qa, qb = va / na, vb / nb
      se = math.sqrt(qa + qb)
      df = ((qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1))
            if qa + qb > 0 else math.nan)
  return {"n_a": na, "n_b": nb, "n_dropped": dropped, "mean_a": mean_a,
          "mean_b": mean_b, "mean_difference": diff, "standard_error": se,
          "df": df, **_t_summary(diff, se, df, alternative=alternative,
                                 confidence=confidence)}


def format_p_value(p: float) -> str:
  """``'p < 0.001'``, ``'p = 0.012'`` or ``'p n/a'`` (undefined test)."""
  if p is None or math.isnan(p):
    return "p n/a"
  return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def format_comparison(result: dict[str, Any], *, scale: float = 1.0,
                      digits: int = 1) -> str:
  """A table cell for a t-test result: ``'+7.4 ± 1.2 (p = 0.003, n=5)'``.

  The mean difference and its standard error times ``scale`` (100 for
  percentage points), the p-value (``format_p_value``) and the sample
  size(s): ``n`` pairs, or ``n=5+7`` for an unpaired test.
  """
  def num(v):
    return "n/a" if math.isnan(v) else f"{scale * v:+.{digits}f}"

  n = (f"{result['n']}" if "n" in result
       else f"{result['n_a']}+{result['n_b']}")
  se = result["standard_error"]
  se = "n/a" if math.isnan(se) else f"{scale * se:.{digits}f}"
  return (f"{num(result['mean_difference'])} ± {se} "
          f"({format_p_value(result['p_value'])}, n={n})")
