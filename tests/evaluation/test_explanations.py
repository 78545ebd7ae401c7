"""``evaluation.explanations.faithfulness_scores``: the metrics it combines."""

import jax
import jax.numpy as jnp
import numpy as np

from lapjax import from_flax, metrics
from lapjax.evaluation.explanations import faithfulness_scores
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
