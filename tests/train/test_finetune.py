"""Fine-tuning a pretrained zoo backbone (``config.pretrained``) on the clue
benchmark, from the reduced torchvision WideResNet fixture."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import finetune
from lapjax import from_flax
from lapjax.data import sources
from lapjax.models import get_card, load_pretrained
from lapjax.train import load_state, train_and_evaluate
from lapjax.train.config import validate
from lapjax.train.loop import build_model, make_optimizer
from lapjax.train.pretrained import Normalized, init_from_pretrained
from lapjax.train.state import create_train_state

FIXTURE_CLASSES = 10          # tools/fixtures/make_resnet.py


def _imported(config):
  """The fixture's variables as ``load_pretrained`` gives them (10-class
  head)."""
  return load_pretrained(config.model.name, config.pretrained.path,
                         num_classes=FIXTURE_CLASSES,
                         **dict(config.model.kwargs))


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/")


def _assert_backbone_equals_checkpoint(state, imported):
  params = _flat(state.params)
  stats = _flat(state.batch_stats)
  want_params = _flat(imported["params"])
  want_stats = _flat(imported["batch_stats"])
  backbone = [k for k in want_params if not k.startswith("head/")]
  assert backbone and set(params) == set(want_params)
  for k in backbone:
    np.testing.assert_array_equal(params[k], want_params[k], err_msg=k)
  assert set(stats) == set(want_stats)
  for k in want_stats:
    np.testing.assert_array_equal(stats[k], want_stats[k], err_msg=k)


def _fresh_state(config):
  info = sources.data_info(config.data)
  model = build_model(config, info)
  tx, _ = make_optimizer(config)
  state = create_train_state(model, tx, jax.random.key(config.seed),
                             info["image_shape"])
  return model, tx, state, info


def test_step_zero_holds_the_imported_backbone_and_a_new_head():
  config = finetune.get_config("tiny")
  model, tx, state, info = _fresh_state(config)
  assert isinstance(model, Normalized)
  state = init_from_pretrained(state, tx, config,
                               num_classes=info["num_classes"])
  _, imported = _imported(config)
  _assert_backbone_equals_checkpoint(state, imported)
  assert state.params["head"]["kernel"].shape[-1] == info["num_classes"] == 4


def test_model_normalises_images_in_unit_range_with_the_card():
  config = finetune.get_config("tiny")
  model, _, state, _ = _fresh_state(config)
  card = get_card(config.model.name)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  x = jax.random.uniform(jax.random.key(1), (2, 32, 40, 3))
  want = model.backbone.apply(
      variables, (x - jnp.array(card.mean)) / jnp.array(card.std))
  np.testing.assert_allclose(model.apply(variables, x), want, rtol=1e-6,
                             atol=1e-6)
  # The backbone's taps keep their names behind the wrapper.
  assert from_flax(model, variables, input_shape=(32, 40, 3)).layers == (
      from_flax(model.backbone, variables, input_shape=(32, 40, 3)).layers)


def test_tiny_config_trains_and_resumes_where_a_straight_run_ends(tmp_path):
  config = finetune.get_config("tiny")
  straight = tmp_path / "straight"
  state = train_and_evaluate(config, str(straight), progress=False)
  assert int(state.step) == config.num_steps
  _, imported = _imported(config)
  moved = [k for k, v in _flat(state.params).items()
           if not k.startswith("head/")
           and not np.array_equal(v, _flat(imported["params"])[k])]
  assert moved, "fine-tuning changed no backbone parameter"

  # Resume from the step-2 checkpoint: the pretrained file is not read
  # again, and the run ends bit for bit where the straight one did.
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / str(config.num_steps))
  again = train_and_evaluate(config, str(resumed), progress=False)
  for a, b in zip(jax.tree.leaves((state.params, state.batch_stats)),
                  jax.tree.leaves((again.params, again.batch_stats))):
    np.testing.assert_array_equal(a, b)

  # evaluate.py's route: the run folder gives back the normalising model.
  model, loaded, _ = load_state(config, str(straight))
  assert isinstance(model, Normalized)
  for a, b in zip(jax.tree.leaves(state.params),
                  jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(a, b)


def test_frozen_backbone_stays_the_checkpoint(tmp_path):
  config = finetune.get_config("tiny")
  config.num_steps = 2
  config.trainable = ("head",)
  state = train_and_evaluate(config, str(tmp_path), progress=False)
  _, imported = _imported(config)
  _assert_backbone_equals_checkpoint(state, imported)


def test_wrong_path_name_or_layout_is_a_clear_error(tmp_path):
  config = finetune.get_config("tiny")
  config.pretrained.path = str(tmp_path / "missing.pth")
  with pytest.raises(FileNotFoundError,
                     match=r"config\.pretrained\.path: no checkpoint at"):
    train_and_evaluate(config, str(tmp_path / "a"), progress=False)

  config = finetune.get_config("tiny")
  config.model.name = "wide_resnet50"
  with pytest.raises(ValueError, match="did you mean 'wide_resnet50_2'"):
    validate(config)

  config = finetune.get_config("tiny")
  config.model.name = "small_cnn"
  config.model.kwargs = {}
  with pytest.raises(ValueError, match="needs a zoo model.*has no card"):
    validate(config)

  config = finetune.get_config("tiny")
  config.pretrained.layout = "timm"
  with pytest.raises(ValueError, match=r"layout must be one of \['hf', "
                     r"'torchvision'\]"):
    validate(config)

  config = finetune.get_config()
  with pytest.raises(ValueError, match="pretrained.path is empty"):
    validate(config)

  config = finetune.get_config("tiny")
  config.init_from = str(tmp_path)
  with pytest.raises(ValueError, match="both set the initial weights"):
    validate(config)

  # A checkpoint of another size: the mismatched names are listed.
  config = finetune.get_config("tiny")
  config.model.kwargs.stage_widths = (8, 8, 16, 16)
  with pytest.raises(ValueError, match=r"(?s)layer1\.0\.conv1\.weight"):
    train_and_evaluate(config, str(tmp_path / "b"), progress=False)
