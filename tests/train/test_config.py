"""Configs: every shipped variant validates; unknown fields are named."""

import pytest

from configs import default
from lapjax.train.config import validate
from lapjax.train.loop import make_optimizer, train_and_evaluate


@pytest.mark.parametrize("arg", [None, "tiny", "resnet18"])
def test_shipped_configs_validate(arg):
  validate(default.get_config(arg))


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown config variant 'huge'"):
    default.get_config("huge")


def test_unknown_field_is_named_with_a_suggestion(tmp_path):
  config = default.get_config("tiny")
  config.optimiser = {"name": "sgd"}      # British spelling: a typo here
  with pytest.raises(ValueError, match=r"unknown config field\(s\): "
                     r"optimiser \(did you mean optimizer\?\)"):
    train_and_evaluate(config, str(tmp_path))
  config = default.get_config("tiny")
  config.data.num_trian = 5
  with pytest.raises(ValueError, match="data.num_trian"):
    validate(config)


def test_free_form_model_kwargs_are_allowed():
  config = default.get_config("tiny")
  config.model.kwargs.convs_per_block = 2
  validate(config)


@pytest.mark.parametrize("field, value, match", [
    ("batch_size", 0, "batch_size must be >= 1"),
    ("num_steps", -3, "num_steps must be >= 1"),
    ("probabilities", "softplus", "probabilities must be one of"),
])
def test_bad_values(field, value, match):
  config = default.get_config("tiny")
  config[field] = value
  with pytest.raises(ValueError, match=match):
    validate(config)


def test_bad_evaluation_baseline():
  config = default.get_config("tiny")
  config.evaluation.baseline = "black"
  with pytest.raises(ValueError, match="evaluation.baseline must be one of "
                     r"\('zero', 'blur'\); got 'black'"):
    validate(config)


def test_bad_optimizer_names():
  config = default.get_config("tiny")
  config.optimizer.name = "adagrad"
  with pytest.raises(ValueError, match="unknown optimizer.name 'adagrad'"):
    make_optimizer(config)
  config.optimizer.name = "sgd"
  config.optimizer.schedule = "step"
  with pytest.raises(ValueError, match="unknown optimizer.schedule 'step'"):
    make_optimizer(config)


def test_image_too_small_for_clues_is_explained(tmp_path):
  config = default.get_config("tiny")
  config.data.image_size = (16, 16)
  with pytest.raises(ValueError, match="too small for min_clue_fraction"):
    train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("field, value, match", [
    ("data.num_validation", 0, r"config.data.num_validation must be >= 1"),
    ("data.num_train", 0, r"config.data.num_train must be >= 1"),
    ("eval_batch_size", 0, r"config.eval_batch_size must be >= 1; got 0"),
    ("on_nonfinite", "ignore", r"on_nonfinite must be one of \('stop', "
     r"'skip'\); got 'ignore'"),
    ("evaluation.faithfulness_steps", 0, r"evaluation.faithfulness_steps "
     r"must be >= 1"),
])
def test_bad_sizes_fail_before_any_work(tmp_path, field, value, match):
  config = default.get_config("tiny")
  *parents, name = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[name] = value
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(config, str(tmp_path), progress=False)
  assert not (tmp_path / "checkpoints").exists()


def test_trainable_prefixes_matching_nothing_are_named(tmp_path):
  config = default.get_config("tiny")
  config.trainable = ("head", "blok2")
  with pytest.raises(ValueError, match=r"config.trainable prefixes "
                     r"\['blok2'\] match no parameter; the model's top-level "
                     r"parameter names are \['block1', 'block2', 'head'\]"):
    train_and_evaluate(config, str(tmp_path), progress=False)
  assert not (tmp_path / "checkpoints").exists()
