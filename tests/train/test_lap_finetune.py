"""Paper 000's three LAP modes in sequence on the tiny config: a vanilla
backbone, detached LAPs on it, then LAP-Pools seeded from the detached heads
and fine-tuned selectively (``configs/lap.py:lap_finetune``); and the
refusals of bad starts."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lap as lap_configs
from lapjax import lap
from lapjax.data import sources
from lapjax.train import (
  checkpoint,
  load_state,
  loop,
  run_folder,
  train_and_evaluate,
)
from lapjax.train.lap_init import dc_difference, seed_pooled_heads
from lapjax.train.state import create_train_state


def _fresh(config, *, abstract=False):
  """Model, optimiser and initial state (``abstract``: shapes only, for
  calls that fail before they read the state)."""
  info = sources.data_info(config.data)
  model = loop.build_model(config, info)
  tx, _ = loop.make_optimizer(config)

  def init():
    return create_train_state(model, tx, jax.random.key(config.seed),
                              info["image_shape"])

  return model, tx, jax.eval_shape(init) if abstract else init()


def _equal(a, b):
  leaves = jax.tree.leaves(jax.tree.map(
      lambda x, y: bool(np.array_equal(x, y)), a, b))
  return bool(leaves) and all(leaves)


def _untrained_run(config, workdir):
  """A run folder holding ``config``'s initial state as its checkpoint (a
  backbone for the detached LAPs, without the cost of training one)."""
  _, _, state = _fresh(config)
  manager = checkpoint.checkpoint_manager(workdir, save_every=1)
  checkpoint.save(manager, state, force=True)
  manager.wait_until_finished()
  manager.close()
  run_folder.atomic_write(os.path.join(workdir, "config.json"),
                          config.to_json_best_effort())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Run folders of a backbone and of detached LAPs trained on it."""
  root = tmp_path_factory.mktemp("modes")
  vanilla = lap_configs.get_config("vanilla,tiny")
  _untrained_run(vanilla, str(root / "vanilla"))
  detached = lap_configs.get_config("lap_detached,tiny")
  detached.init_from = str(root / "vanilla")
  detached.num_steps = detached.checkpoint_every = 3
  train_and_evaluate(detached, str(root / "detached"), progress=False)
  return root


def test_three_modes_in_sequence(runs, tmp_path, capsys):
  det_model, det, _ = load_state(
      lap_configs.get_config("lap_detached,tiny"), str(runs / "detached"))
  config = lap_configs.get_config("lap_finetune,tiny")
  config.init_from = str(runs / "detached")
  config.num_steps = config.checkpoint_every = 3
  assert config.lap.heads_from == (("block1", "pool1"),
                                   ("block2", "global_pool"))
  assert config.trainable == ("pool1", "global_pool", "block2", "head")

  # Step 0: the pooled heads are the detached heads, the rest the backbone.
  model, tx, state = _fresh(config)
  seeded = loop.init_from_run(state, tx, config.init_from, config=config)
  for layer, place in config.lap.heads_from:
    assert _equal(seeded.params[place]["head"], det.params["laps"][layer])
    assert _equal(seeded.params[place]["disc_head"],
                  det.params["laps"][f"{layer}_disc"])
    assert float(seeded.params[place]["alpha"]) == config.lap.alpha_init
  for name in ("block1", "block2", "head"):
    assert _equal(seeded.params[name], det.params["backbone"][name])
  assert _equal(seeded.batch_stats, det.batch_stats["backbone"])
  assert "pool1/head <- laps/block1" in capsys.readouterr().out
  # The first LAP-Pool sees block1's output, as the detached head did:
  # the same maps on the same images.
  x = jnp.asarray(sources.make_source(config.data, "validation")[0].get(
      np.arange(4))["image"])
  _, plugged = model.apply({"params": seeded.params,
                            "batch_stats": seeded.batch_stats}, x,
                           mutable=["lap"])
  _, detached = det_model.apply({"params": det.params,
                                 "batch_stats": det.batch_stats}, x,
                                mutable=["lap"])
  np.testing.assert_allclose(lap.lap_outputs(plugged["lap"])[0][0],
                             lap.lap_outputs(detached["lap"])[0][0],
                             rtol=1e-6, atol=1e-6)

  # Fine-tuning: block1 and its BatchNorm statistics stay frozen, the
  # LAP-Pools, block2 and the classifier move.
  tuned = train_and_evaluate(config, str(tmp_path / "ft"), progress=False)
  assert int(tuned.step) == 3
  assert _equal(tuned.params["block1"], det.params["backbone"]["block1"])
  assert _equal(tuned.batch_stats["block1"],
                det.batch_stats["backbone"]["block1"])
  for name in ("pool1", "global_pool", "block2", "head"):
    moved = jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.any(a != b)), tuned.params[name],
        seeded.params[name]))
    assert any(moved), name
  assert (tmp_path / "ft" / "checkpoints-best").is_dir()


def test_another_dc_system_is_refused_with_the_difference(runs):
  config = lap_configs.get_config("lap_detached,multi,tiny")
  config.init_from = str(runs / "vanilla")          # a binary run
  _, tx, state = _fresh(config, abstract=True)
  with pytest.raises(ValueError, match=r"(?s)another DC system.*classes "
                     r"\['no clue', 'clue'\] vs \['background', "):
    loop.init_from_run(state, tx, config.init_from, config=config)


def test_fine_tuning_needs_a_detached_run(runs):
  config = lap_configs.get_config("lap_finetune,tiny")
  config.init_from = str(runs / "vanilla")
  _, tx, state = _fresh(config, abstract=True)
  with pytest.raises(ValueError, match="lap.mode='off'.*detached"):
    loop.init_from_run(state, tx, config.init_from, config=config)
  # Without heads_from, a detached run matches nothing by name: the hint.
  config.lap.heads_from = ()
  config.init_from = str(runs / "detached")
  with pytest.raises(ValueError, match="set config.lap.heads_from"):
    loop.init_from_run(state, tx, config.init_from, config=config)


def test_dc_difference_names_classes_and_sets():
  names = ["bg", "a", "b"]
  same = lap.one_vs_others(3, bgo=0).membership
  assert dc_difference(same, same, names, names) == []
  other = lap.custom([[1], [2]], [[0, 2], [0]], 3).membership
  assert dc_difference(same, other, names, names) == [
      "DC 1: DC+ ['b'], DC- ['bg', 'a'] vs DC+ ['b'], DC- ['bg']"]
  assert dc_difference(same, other[:1], names, names) == [
      "2 DCs vs 1", "DC 1 only in the source run: DC+ ['b'], DC- ['bg', 'a']"]
  binary = lap.binary().membership
  assert dc_difference(binary, same, ["n", "y"], names) == [
      "classes ['n', 'y'] vs ['bg', 'a', 'b']", "1 DCs vs 2"]


def _head(widths, channels, m=1):
  sizes = (channels, *widths, m)
  return {f"hidden{i + 1}" if i < len(widths) else "out":
          {"kernel": np.full(sizes[i:i + 2], float(i + 1)),
           "bias": np.zeros(sizes[i + 1])} for i in range(len(sizes) - 1)}


def test_seeding_refuses_unnamed_unknown_and_misfit_heads():
  params = {"block1": {}, "pool1": {"head": _head((4,), 8), "alpha": 2.0},
            "global_pool": {"head": _head((4,), 16), "alpha": 2.0}}
  source = {"laps": {"block1": _head((4,), 8), "block2": _head((4,), 16)},
            "backbone": {}}
  kw = dict(detached_layers=("block1", "block2"), workdir="run")
  with pytest.raises(ValueError, match=r"heads on \['block2'\] of run have "
                     r"no LAP-Pool to go to.*\['pool1', 'global_pool'\]"):
    seed_pooled_heads(params, source, [("block1", "pool1")], **kw)
  with pytest.raises(ValueError, match=r"layers \['block3'\] .*on "
                     r"\['block1', 'block2'\]"):
    seed_pooled_heads(params, source, [("block1", "pool1"),
                                       ("block2", ""), ("block3", "x")],
                      **kw)
  with pytest.raises(ValueError, match=r"laps/block2 of run does not fit "
                     r"pool1/head"):
    seed_pooled_heads(params, source, [("block2", "pool1"),
                                       ("block1", "")], **kw)
  out, lines = seed_pooled_heads(params, source, [("block1", "pool1"),
                                                  ("block2", "")], **kw)
  assert out["pool1"]["head"] is source["laps"]["block1"]
  assert out["global_pool"] is params["global_pool"]
  assert lines == ["pool1/head <- laps/block1",
                   "laps/block2: left out (config.lap.heads_from)"]


def test_heads_from_is_validated():
  from lapjax.train.config import validate
  config = lap_configs.get_config("lap_finetune,tiny")
  config.lap.heads_from = (("block1", "pool7"), ("block2", "global_pool"))
  with pytest.raises(ValueError, match=r"places \['pool7'\] are not LAP-"):
    validate(config)
  config.lap.heads_from = (("block1", "pool1"), ("block1", "global_pool"))
  with pytest.raises(ValueError, match=r"names \['block1'\] more than once"):
    validate(config)
  config = lap_configs.get_config("lap_wsl,tiny")
  config.lap.heads_from = (("block1", "pool1"),)
  with pytest.raises(ValueError, match="needs config.lap.mode='plugged' "
                     "and config.init_from"):
    validate(config)


def test_resuming_an_old_run_folder_takes_new_fields_defaults(runs, tmp_path):
  old = tmp_path / "old"
  shutil.copytree(runs / "vanilla", old)
  saved = json.loads((old / "config.json").read_text())
  for field in ("balanced_batches", "best_checkpoint"):
    del saved[field]
  del saved["lap"]["heads_from"]
  (old / "config.json").write_text(json.dumps(saved))
  config = lap_configs.get_config("vanilla,tiny")
  run_folder.check_resume_config(str(old), config, has_checkpoint=True)
  config.balanced_batches = True
  with pytest.raises(ValueError, match=r"\['balanced_batches'\] differ"):
    run_folder.check_resume_config(str(old), config, has_checkpoint=True)
