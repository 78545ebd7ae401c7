"""``evaluation.explanations`` and ``evaluation.methods``: the metrics and
method settings an evaluation combines."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from lapjax import attribution as attr
from lapjax import from_flax, metrics
from lapjax.evaluation.explanations import faithfulness_scores
from lapjax.evaluation.methods import standard_methods
from tests.attribution.models import small_cnn


def test_faithfulness_scores_are_the_metrics_and_sic_aic_is_optional():
  model, v, x = small_cnn(shape=(5, 12, 20, 3))
  clf = from_flax(model, v, layers=["block1"])
  labels = np.array([0, 1, 2, 3, 1])
  maps = np.asarray(jax.random.normal(jax.random.key(4), x.shape[:3]))
  key = jax.random.key(0)
  full, skipped = faithfulness_scores(clf, np.asarray(x), labels, maps,
                                      key=key, steps=8, batch_size=2)
  short, none_skipped = faithfulness_scores(
      clf, np.asarray(x), labels, maps, key=key, steps=8, batch_size=2,
      sic_aic=False)
  t = jnp.asarray(labels)
  expected = {**metrics.positive_negative(clf, x, maps, t),
              **metrics.insertion_deletion(clf, x, maps, t, steps=8)}
  assert set(full) == {"pos", "neg", "del", "ins", "npd", "idd", "aic", "sic"}
  assert set(short) == set(full) - {"aic", "sic"} and none_skipped == 0
  assert all(len(v) == 5 for v in full.values())
  for k in short:
    np.testing.assert_allclose(short[k], full[k], rtol=1e-6)
    np.testing.assert_allclose(short[k], expected[k], rtol=1e-5, atol=1e-5)
  assert 0 <= skipped <= 5


def test_faithfulness_scores_with_a_blurred_baseline():
  model, v, x = small_cnn(shape=(2, 12, 20, 3))
  clf = from_flax(model, v, layers=[])
  labels = np.array([1, 3])
  maps = np.asarray(jax.random.normal(jax.random.key(5), x.shape[:3]))
  blur, _ = faithfulness_scores(clf, np.asarray(x), labels, maps,
                                key=jax.random.key(0), steps=4,
                                baseline="blur", sic_aic=False)
  zero, _ = faithfulness_scores(clf, np.asarray(x), labels, maps,
                                key=jax.random.key(0), steps=4,
                                sic_aic=False)
  t = jnp.asarray(labels)
  expected = metrics.insertion_deletion(clf, x, maps, t, steps=4,
                                        baseline="blur")
  for k in ("ins", "del", "idd"):
    np.testing.assert_allclose(blur[k], expected[k], rtol=1e-5, atol=1e-5)
  assert not np.allclose(blur["ins"], zero["ins"])


def test_every_method_with_a_baseline_gets_the_evaluation_baseline():
  table = standard_methods("block1", key=jax.random.key(0), image_size=16,
                           sloc_p=(0.5, 0.5), baseline="blur")
  given = set()
  for name, method in table.items():
    params = set(inspect.signature(method.fn).parameters)
    if "kwargs" in params:                   # sloc_m, sloc_xp: sloc's options
      params |= set(inspect.signature(attr.sloc).parameters)
    for arg in ("baseline", "fill"):
      if arg in params:
        assert method.kwargs.get(arg) == "blur", name
        given.add(name)
  assert given == {"integrated_gradients", "score_cam", "occlusion", "rise",
                   "sloc", "sloc_m", "sloc_xp", "deeplift", "guided_ig",
                   "dix", "meaningful_perturbation", "feature_ablation",
                   "shapley_sampling", "kernel_shap", "lime"}
  # Extremal Perturbations blurs (or fades to zero) by its own option.
  assert table["extremal_perturbation"].kwargs["perturbation"] == "blur"
