"""Training with the explanation loss (paper 001) through the config."""

import jax
import numpy as np
import pytest

from configs import default
from lapjax import Classifier, from_flax
from lapjax import attribution as attr
from lapjax import explain_loss as E
from lapjax.classifier import apply_tapped
from lapjax.data import batching, sources
from lapjax.models import create_model
from lapjax.train import train_and_evaluate
from lapjax.train.config import validate
from lapjax.train.loop import ExplainLoss, make_optimizer, train_step
from lapjax.train.state import create_train_state
from tests.train.determinism import run_twice


def _config(kind="logit_sqr"):
  c = default.get_config("tiny")
  c.data.binary = True
  c.explain_loss.type = kind
  c.explain_loss.layer = "block2"
  return c


def _setup(config):
  source, info = sources.make_source(config.data, "train")
  model = create_model(config.model.name, num_classes=info["num_classes"],
                       **config.model.kwargs)
  tx, _ = make_optimizer(config)
  state = create_train_state(model, tx, jax.random.key(0),
                             info["image_shape"])
  return source, model, tx, state


def _batch(source, config, step):
  b = batching.train_batch(source, config.batch_size, step, 0)
  return {k: b[k] for k in ("image", "label", "boxes", "boxes_valid")}


def test_explain_step_is_deterministic_and_reports_both_terms():
  config = _config()
  source, model, tx, state0 = _setup(config)
  explain = ExplainLoss.from_config(config)
  step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx,
                                         explain=explain))
  state, m = run_twice(step, state0, [_batch(source, config, s)
                                      for s in range(3)])
  assert 0.0 <= float(m["explain"]) <= 1.0
  np.testing.assert_allclose(
      m["loss"], m["cross_entropy"] + config.explain_loss.alpha
      * m["explain"], rtol=1e-6)
  plain = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx))
  p_state = state0
  for s in range(3):
    p_state, _ = plain(p_state, _batch(source, config, s))
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(p_state.params), jax.tree.leaves(state.params)))


def _grad_cam_loss(classifier, batch, kind, layer):
  """``L_exp`` from lapjax's Grad-CAM (``[B, K]`` cotangent targets: the
  gradient of each sample's explanation score w.r.t. its logits)."""
  logits = classifier.apply(batch["image"])[0]
  cot = jax.grad(lambda z: E.explanation_score(
      z, kind, positive=batch["label"], negative=0).sum())(logits)
  h = attr.grad_cam(classifier, batch["image"], cot, layer=layer,
                    resize=False)
  return E.training_loss(h, batch)


@pytest.mark.parametrize("statistics", E.STATISTICS)
def test_in_loss_grad_cam_uses_the_chosen_batchnorm_statistics(statistics):
  """'batch': the Grad-CAM of the training forward pass itself (BatchNorm
  on the batch's statistics, as the paper's create_graph Grad-CAM);
  'running': lapjax's inference-mode Grad-CAM. The two differ on a model
  with BatchNorm, so each equality is specific."""
  config = _config()
  config.explain_loss.statistics = statistics
  source, model, tx, state = _setup(config)
  state, _ = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx))(
      state, _batch(source, config, 0))          # non-trivial running stats
  batch = _batch(source, config, 1)
  explain = ExplainLoss.from_config(config)
  _, m = train_step(state, batch, model=model, tx=tx, explain=explain)
  v = {"params": state.params, "batch_stats": state.batch_stats}
  inference = from_flax(model, v, layers=["block2"])

  def training_mode(x, deltas=None):
    (logits, _), feats = apply_tapped(
        model, v, x, layers=["block2"], deltas=deltas, train=True,
        mutable=["batch_stats"], rngs={"dropout": state.step_key()})
    return logits, feats

  refs = {"running": _grad_cam_loss(inference, batch, "logit_sqr", "block2"),
          "batch": _grad_cam_loss(Classifier(training_mode, ("block2",)),
                                  batch, "logit_sqr", "block2")}
  assert abs(float(refs["batch"] - refs["running"])) > 1e-3
  np.testing.assert_allclose(m["explain"], refs[statistics], rtol=1e-5)


def test_train_py_path_runs_with_the_explanation_loss(tmp_path):
  config = _config("prob_diff")
  config.num_steps = 4
  train_and_evaluate(config, str(tmp_path), progress=False)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert sum('"explain"' in line for line in lines) == 1   # log_every 4


@pytest.mark.parametrize("field,value,match", [
    ("type", "logits", "explain_loss.type must be one of"),
    ("alpha", -0.1, "alpha must be >= 0"),
    ("top_k", 0.0, r"top_k .* \(0, 1\]"),
    ("top_k", 1.2, r"top_k .* \(0, 1\]"),
    ("reading", "hard", "reading must be one of"),
    ("statistics", "train", "statistics must be one of")])
def test_bad_explain_settings_are_refused(field, value, match):
  config = _config()
  config.explain_loss[field] = value
  with pytest.raises(ValueError, match=match):
    validate(config)


def test_unknown_layer_is_named(tmp_path):
  config = _config()
  config.explain_loss.layer = "block7"
  with pytest.raises(ValueError, match=r"unknown layer.*block7"):
    train_and_evaluate(config, str(tmp_path), progress=False)
