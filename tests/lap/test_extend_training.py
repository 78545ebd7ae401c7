"""LAP-extended models, detached LAPs, selective fine-tuning, LAP training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lap as lap_configs
from lapjax import from_flax, lap
from lapjax.data import batching, sources
from lapjax.models import ResNet18, SmallCNN
from lapjax.train import loop
from lapjax.train.state import create_train_state
from tests.train.determinism import run_twice


def _setup(variant, **overrides):
  c = lap_configs.get_config(variant + ",tiny")
  c.optimizer.schedule = "constant"          # a non-zero first step
  for k, v in overrides.items():
    c[k] = v
  src, info = sources.make_source(c.data, "train")
  model = loop.build_model(c, info)
  tx, _ = loop.make_optimizer(c)
  state = create_train_state(model, tx, jax.random.key(0),
                             info["image_shape"])
  return c, src, info, model, tx, state


def _step(model, tx, **options):
  """``loop.train_step`` as one compiled program, as the training loop runs
  it (op by op, every operation of the model and the losses compiles on
  its own)."""
  return jax.jit(functools.partial(loop.train_step, model=model, tx=tx,
                                   **options))


def _batch(src, c, step=0, expert=False):
  b = batching.train_batch(src, 16, step, 0)
  out = {"image": b["image"], "label": b["label"]}
  if expert:
    from lapjax.data import boxes
    out["box_mask"] = boxes.boxes_to_mask(b["boxes"], b["boxes_valid"],
                                          *b["image"].shape[1:3])
  return out


def test_lap_cnn_places_and_map_taps():
  spec = lap.LAPSpec(("pool1", "global_pool"), 3, head_widths=(8,))
  m = SmallCNN(4, widths=(8, 16), pool=spec)
  v = m.init(jax.random.key(0), jnp.zeros((1, 32, 24, 3)))
  clf = from_flax(m, v, layers=spec.map_layers())
  logits, feats = clf.apply(jnp.ones((2, 32, 24, 3)))
  assert logits.shape == (2, 4)
  assert feats["pool1/head"].shape == (2, 32, 24, 3)
  assert feats["global_pool/head"].shape == (2, 16, 12, 3)
  assert np.all((np.asarray(feats["pool1/head"]) >= 0)
                & (np.asarray(feats["pool1/head"]) <= 1))


def test_lap_resnet_replaces_strided_stage_entry_and_pools():
  spec = lap.LAPSpec(("stem_pool", "stage3_pool", "global_pool"), 2,
                     head_widths=(4,))
  m = ResNet18(num_classes=3, width=4, pool=spec)
  x = jnp.ones((1, 64, 64, 3))
  v = jax.jit(m.init)(jax.random.key(0), x)     # one program, not op by op
  plain = ResNet18(num_classes=3, width=4)
  assert (jax.eval_shape(m.apply, v, x).shape
          == jax.eval_shape(plain.init_with_output, jax.random.key(0),
                            x)[0].shape)
  clf = from_flax(m, v, layers=("stage3", "stage3_pool/head"),
                  input_shape=(64, 64, 3))
  _, f = clf.apply(x)
  assert f["stage3_pool/head"].shape == (1, 8, 8, 2)      # stage2's grid
  assert f["stage3"].shape[1:3] == (4, 4)
  # The stage entry conv runs at stride 1 after the LAP-Pool.
  assert v["params"]["stage3"]["block1"]["conv1"]["kernel"].shape[:2] == (
      3, 3)


def test_unknown_lap_place_is_refused(tmp_path):
  c = lap_configs.get_config("lap_wsl,tiny")
  c.lap.places = ("pool7", "global_pool")
  with pytest.raises(ValueError, match="pool7.*not pooling places"):
    loop.train_and_evaluate(c, str(tmp_path), progress=False)


@pytest.mark.parametrize("variant", ["lap_wsl", "lap_wsl,multi"])
def test_lap_training_step_is_deterministic_and_finite(variant):
  c, src, info, model, tx, state = _setup(variant)
  terms = loop.LAPTraining.from_config(c, info)
  step = jax.jit(lambda s, b: loop.train_step(s, b, model=model, tx=tx,
                                              lap_terms=terms))
  _, m1 = run_twice(step, state, [_batch(src, c, s) for s in range(2)])
  assert all(np.isfinite(float(v)) for v in m1.values())
  for k in ("lap1", "lap2", "lap_disc", "lap_concordance", "cross_entropy"):
    assert k in m1
  np.testing.assert_allclose(
      m1["loss"], m1["cross_entropy"] + m1["lap"], rtol=1e-5)


def test_expert_training_step_uses_box_masks():
  c, src, info, model, tx, state = _setup("lap_bbl")
  terms = loop.LAPTraining.from_config(c, info, expert_gamma_iar=0.1)
  assert terms.objective.supervision == "expert"
  step = _step(model, tx, lap_terms=terms)
  _, m = step(state, _batch(src, c, expert=True))
  assert np.isfinite(float(m["lap"]))
  with pytest.raises(ValueError, match="box masks"):
    step(state, _batch(src, c))


def test_detached_laps_leave_the_backbone_bit_identical():
  c, src, info, model, tx, state = _setup("lap_detached")
  backbone = model.backbone
  bvars = {"params": state.params["backbone"],
           "batch_stats": state.batch_stats["backbone"]}
  x = jnp.asarray(_batch(src, c)["image"])
  np.testing.assert_array_equal(
      model.apply({"params": state.params,
                   "batch_stats": state.batch_stats}, x),
      backbone.apply(bvars, x))
  terms = loop.LAPTraining.from_config(c, info)
  assert terms.detached
  step = jax.jit(lambda s, b: loop.train_step(
      s, b, model=model, tx=tx, lap_terms=terms,
      trainable=loop.trainable_prefixes(c)))
  new = state
  for i in range(3):
    new, metrics = step(new, _batch(src, c, i))
  jax.tree.map(np.testing.assert_array_equal, new.params["backbone"],
               state.params["backbone"])
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats,
               state.batch_stats)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                         new.params["laps"], state.params["laps"])
  assert all(jax.tree.leaves(changed))
  assert float(metrics["loss"]) == float(metrics["lap"])


def test_selective_fine_tuning_freezes_the_rest():
  c, src, info, model, tx, state = _setup(
      "lap_wsl", trainable=("global_pool", "head"))
  terms = loop.LAPTraining.from_config(c, info)
  new, _ = _step(model, tx, lap_terms=terms, trainable=c.trainable)(
      state, _batch(src, c))
  for name in state.params:
    same = jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), new.params[name],
        state.params[name]))
    assert all(same) == (name not in ("global_pool", "head")), name
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats,
               state.batch_stats)          # every BatchNorm is frozen here


def test_detached_config_needs_a_trained_run():
  c = lap_configs.get_config("lap_detached,tiny")
  c.init_from = None
  from lapjax.train.config import validate
  with pytest.raises(ValueError, match="init_from"):
    validate(c)


def test_graft_copies_matching_leaves_only():
  ours = {"a": {"w": np.zeros(3)}, "b": np.zeros(2), "new": np.zeros(1)}
  theirs = {"a": {"w": np.ones(3)}, "b": np.ones(5), "gone": np.ones(1)}
  out, n = loop.graft(ours, theirs)
  assert n == 1
  np.testing.assert_array_equal(out["a"]["w"], 1)
  np.testing.assert_array_equal(out["b"], 0)            # shape differs
  np.testing.assert_array_equal(out["new"], 0)


def test_explanation_loss_combines_with_lap_losses():
  c, src, info, model, tx, state = _setup("lap_wsl")
  c.explain_loss.type = "logit_sqr"
  c.explain_loss.layer = "block2"
  explain = loop.ExplainLoss.from_config(c)
  terms = loop.LAPTraining.from_config(c, info)
  b = batching.train_batch(src, 16, 0, 0)
  batch = {k: b[k] for k in ("image", "label", "boxes", "boxes_valid")}
  _, m = _step(model, tx, explain=explain, lap_terms=terms)(state, batch)
  assert float(m["explain"]) > 0 and float(m["lap"]) > 0
  np.testing.assert_allclose(
      m["loss"], m["cross_entropy"] + c.explain_loss.alpha * m["explain"]
      + m["lap"], rtol=1e-5)


def test_detached_model_takes_an_injected_activation_like_any_model():
  from lapjax import attribution as attr
  c, src, info, model, tx, state = _setup("lap_detached")
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  backbone_vars = {"params": state.params["backbone"],
                   "batch_stats": state.batch_stats["backbone"]}
  x = jnp.asarray(_batch(src, c)["image"][:4])
  t = jnp.array([0, 1, 1, 0])
  ours = attr.guided_backprop(attr.guided_classifier(model, variables,
                                                     layers=()), x, t)
  ref = attr.guided_backprop(attr.guided_classifier(
      model.backbone, backbone_vars, layers=()), x, t)
  np.testing.assert_array_equal(ours, ref)
  plain = attr.gradient(from_flax(model, variables, layers=()), x, t)
  assert not np.allclose(ours, plain)
