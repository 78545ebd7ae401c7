"""The papers' protocols (configs/protocols/) end to end, offline.

Each test runs ``evaluate.py --config configs/protocols/<x>.py:tiny`` (the
program's ``main``, its flags parsed as on the command line) on
``tfds.testing.mock_data`` or a generated ImageNet-S folder, and checks the
streamed report (padded last batch included) against the metric functions
run in memory on the same images.
"""

import importlib.util
import json
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from PIL import Image

from lapjax import metrics
from lapjax.evaluation import explanations, grid_game, protocols, streaming
from lapjax.evaluation.methods import standard_methods

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MOCK_EXAMPLES = 8


def _entry():
  """evaluate.py as a module (loaded once: its flags are global)."""
  if "lapjax_evaluate_entry" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "lapjax_evaluate_entry", os.path.join(ROOT, "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["lapjax_evaluate_entry"] = module
  return sys.modules["lapjax_evaluate_entry"]


def run_evaluate(name: str, workdir, **overrides) -> dict:
  """``evaluate.py --config configs/protocols/<name>.py:tiny``, its
  parsed config changed by ``overrides`` (``data__root='...'`` sets
  ``config.data.root``, as ``--config.data.root`` would); the report.json
  it wrote."""
  entry = _entry()
  cwd = os.getcwd()
  os.chdir(ROOT)                   # the config imports configs.protocols
  sys.path.insert(0, ROOT)
  try:
    flags.FLAGS.unparse_flags()
    with warnings.catch_warnings():
      # ml_collections' config_flags loads the file with load_module().
      warnings.filterwarnings("ignore", "the load_module",
                              DeprecationWarning)
      flags.FLAGS(["evaluate.py",
                   f"--config=configs/protocols/{name}.py:tiny",
                   f"--workdir={workdir}", "--noprogress"])
    config = flags.FLAGS["config"].value
    for key, value in overrides.items():
      group, field = key.split("__")
      config[group][field] = value
    entry.main(["evaluate.py"])
  finally:
    sys.path.remove(ROOT)
    os.chdir(cwd)
  with open(os.path.join(workdir, "report.json")) as f:
    return json.load(f)


def _config(name: str):
  sys.path.insert(0, ROOT)
  try:
    spec = importlib.util.spec_from_file_location(
        f"protocol_{name}", os.path.join(ROOT, "configs", "protocols",
                                         f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
  finally:
    sys.path.remove(ROOT)
  return c


def _setup(config):
  """The protocol's source, model and methods, built independently of the
  streamed run (same config)."""
  source = protocols.make_protocol_source(config)
  images = source.get(np.arange(source.num_examples))
  module, variables = protocols.load_model(config, images["image"].shape[1:])
  table = standard_methods(config.layer, key=jax.random.key(config.seed),
                           image_size=images["image"].shape[1],
                           ig_steps=config.ig_steps)
  methods = {m: table[m] for m in config.methods}
  from lapjax.evaluation.methods import method_classifiers
  clfs = method_classifiers(methods, module, variables,
                            layers=[config.layer],
                            input_shape=images["image"].shape[1:])
  return source, images, methods, clfs


def test_imagenet_faithfulness_equals_the_in_memory_metrics(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    report = run_evaluate("imagenet_faithfulness", tmp_path)
    config = _config("imagenet_faithfulness")
    source, images, methods, clfs = _setup(config)
  n = source.num_examples
  assert n == 6 and report["batches"] == 2     # batch of 4: last padded
  clf = clfs["plain"]
  predicted = np.asarray(clf.apply(jnp.asarray(images["image"]))[0]).argmax(
      -1).astype(np.int32)
  assert report["scores"]["model"]["top1_accuracy"]["n"] == n
  np.testing.assert_allclose(
      report["scores"]["model"]["top1_accuracy"]["mean"],
      np.mean(predicted == images["label"]))
  maps = explanations.explain(clfs, images["image"], predicted, methods)
  # SIC / AIC skip an image whose prediction has probability under 0.8
  # (PAIR's filter): here every image of the random-weight model.
  probs = jax.nn.softmax(clf.apply(jnp.asarray(images["image"]))[0])
  assert np.all(np.max(np.asarray(probs), -1) < 0.8)
  for name in methods:
    values, _ = explanations.faithfulness_scores(
        clf, images["image"], predicted, maps[name],
        key=jax.random.key(0), steps=config.faithfulness_steps,
        sic_aic=False)
    got = report["scores"][name]
    for metric in ("pos", "neg", "npd", "ins", "del", "idd"):
      assert got[metric]["n"] == n, metric
      np.testing.assert_allclose(got[metric]["mean"], values[metric].mean(),
                                 rtol=1e-4, atol=1e-4, err_msg=metric)
    keep = np.asarray(metrics.keep_top_accuracy(
        clf, jnp.asarray(images["image"]), jnp.asarray(maps[name]),
        jnp.asarray(predicted), fractions=tuple(config.keep_fractions)))
    for j, f in enumerate(config.keep_fractions):
      np.testing.assert_allclose(got[f"keep_top_{round(100 * f)}"]["mean"],
                                 keep[:, j].mean(), atol=1e-6)
    assert got["sic"]["n"] + got["sic"]["nan"] == n
    # The n images skipped, not the padding rows of the last batch.
    assert report["counts"][f"sic_aic_skipped/{name}"] == n


def test_voc_one_map_per_present_class_against_its_boxes(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    report = run_evaluate("voc", tmp_path)
    config = _config("voc")
    source, images, methods, clfs = _setup(config)
  labels, masks = images["labels"], images["class_masks"]
  rows = np.argwhere(labels >= 0)                  # (image, slot) pairs
  assert len(rows) > source.num_examples           # some multi-label
  for name, m in methods.items():
    clf = clfs[m.classifier]
    # One class at a time, [B] targets: independent of the [B, L] call.
    maps = np.concatenate([np.asarray(m.fn(
        clf, jnp.asarray(images["image"][[i]]),
        jnp.asarray([labels[i, j]], jnp.int32), **m.kwargs))
        for i, j in rows])
    region = masks[rows[:, 0], rows[:, 1]]
    scores, _ = streaming.localization_summaries(maps, region)
    got = report["scores"][name]
    for metric in ("pointing_game", "relevance_mass", "relevance_rank",
                   "iou"):
      assert got[metric]["n"] + got[metric]["nan"] == len(rows), metric
      np.testing.assert_allclose(got[metric]["mean"], scores[metric]["mean"],
                                 rtol=1e-4, atol=1e-5, err_msg=metric)
    pg = np.asarray(metrics.pointing_game(jnp.asarray(maps),
                                          jnp.asarray(region),
                                          tolerance=15))
    np.testing.assert_allclose(got["pointing_game_15px"]["mean"],
                               np.nanmean(pg), atol=1e-6)


def test_quad_grid_scores_every_quadrant_with_and_without_the_lens(
    tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES * 2):
    report = run_evaluate("quad_grid", tmp_path, data__num_images=16)
    config = _config("quad_grid")
    config.data.num_images = 16
    source, images, methods, clfs = _setup(config)
  from lapjax.data import grid
  tiles = grid.choose_tiles(images["label"][:config.pool_images],
                            config.num_grids, seed=config.seed)
  grids = grid.make_grids(images, tiles)
  grids["mask"] = grids["quadrant_mask"]      # mock images have no masks
  maps = explanations.explain(clfs, grids["image"], grids["labels"], methods)
  from lapjax.attribution import lens_refine
  for name in methods:
    for variant, v in ((name, maps[name]),
                       (name + "+AL", lens_refine(jnp.asarray(maps[name])))):
      ref = grid_game.score_maps(jnp.asarray(v), grids)
      for metric in ("RA", "IoU", "F1"):
        got = report["scores"][variant][metric]
        assert got["n"] + got["nan"] == 4 * config.num_grids
        np.testing.assert_allclose(got["mean"], np.nanmean(ref[metric]),
                                   rtol=1e-4, atol=1e-5)


def test_two_image_reports_paired_lens_differences(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES * 2):
    report = run_evaluate("two_image", tmp_path, data__num_images=16)
  for name in ("grad_cam", "input_x_gradient"):
    for metric in ("ins", "del", "idd"):
      base = report["scores"][name][metric]
      lens = report["scores"][name + "+AL"][metric]
      diff = report["scores"][name + "+AL-base"][metric]
      assert base["n"] == lens["n"] == 2 * 3          # 3 composites
      np.testing.assert_allclose(diff["mean"], lens["mean"] - base["mean"],
                                 rtol=1e-6, atol=1e-6)
      paired = report["paired"][name][metric]
      np.testing.assert_allclose(paired["diff_se"],
                                 diff["std"] * np.sqrt(6 / 5) / np.sqrt(6))
      np.testing.assert_allclose(paired["relative"],
                                 lens["mean"] / base["mean"] - 1, rtol=1e-6)


def _imagenet_s_folder(root, classes=("n01", "n02"), per_class=3, seed=0):
  """A generated ImageNet-S folder: RGB JPEG-free PNG images (exact
  pixels) and R + 256 G masks with ignored (1000) pixels."""
  rng = np.random.default_rng(seed)
  for k, wnid in enumerate(classes):
    os.makedirs(root / "validation" / wnid)
    os.makedirs(root / "validation-segmentation" / wnid)
    for i in range(per_class):
      h, w = 40 + 4 * i, 48
      Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(
          root / "validation" / wnid / f"img{i}.png")
      ids = np.zeros((h, w), np.int64)
      ids[10:25, 12 + 3 * i:30 + 3 * i] = 300 + k   # G channel used
      ids[0:3, :] = 1000                             # ignored
      rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1)
      Image.fromarray(rgb.astype(np.uint8)).save(
          root / "validation-segmentation" / wnid / f"img{i}.png")


def test_imagenet_s_folder_localisation(tmp_path):
  data = tmp_path / "ImageNetS"
  _imagenet_s_folder(data)
  report = run_evaluate("imagenet_s", tmp_path / "run",
                        data__root=str(data), model__num_classes=2)
  config = _config("imagenet_s")
  config.data.root, config.model.num_classes = str(data), 2
  _, images, methods, clfs = _setup(config)
  assert len(images["label"]) == 6
  maps = explanations.explain(clfs, images["image"], images["label"],
                              methods)
  for name in methods:
    scores, _ = streaming.localization_summaries(maps[name], images["mask"])
    for metric in ("pointing_game", "relevance_mass", "roc_auc"):
      got = report["scores"][name][metric]
      assert got["n"] + got["nan"] == 6
      np.testing.assert_allclose(got["mean"], scores[metric]["mean"],
                                 rtol=1e-4, atol=1e-5)


def test_protocol_config_refuses_unknown_fields_and_two_models():
  c = protocols.base_protocol_config()
  c.model.checkpoint = "x.pth"
  c.methds = ("grad_cam",)
  with pytest.raises(ValueError, match=r"unknown protocol config field\(s\)"
                     r" \['methds'\]"):
    protocols.check_protocol_config(c)
  c = protocols.base_protocol_config()
  c.model.checkpoint = "x.pth"
  c.model.random_init = True
  with pytest.raises(ValueError, match="exactly one of"):
    protocols.check_protocol_config(c)


def test_coco_folder_localisation_per_present_class(tmp_path):
  from tests.data.test_coco import write_coco
  ann, images = write_coco(tmp_path, h=40, w=48)
  report = run_evaluate("coco", tmp_path / "run", data__root=images,
                        data__annotations=ann)
  config = _config("coco")
  config.data.root, config.data.annotations = images, ann
  source, data, methods, clfs = _setup(config)
  rows = np.argwhere(data["labels"] >= 0)
  m = methods["grad_cam"]
  maps = np.asarray(m.fn(clfs["plain"], jnp.asarray(data["image"][rows[:, 0]]),
                         jnp.asarray(data["labels"][rows[:, 0], rows[:, 1]]),
                         **m.kwargs))
  region = data["class_masks"][rows[:, 0], rows[:, 1]]
  scores, _ = streaming.localization_summaries(maps, region)
  got = report["scores"]["grad_cam"]
  for metric in ("relevance_mass", "region_attribution"):
    assert got[metric]["n"] + got[metric]["nan"] == len(rows) == 3
    np.testing.assert_allclose(got[metric]["mean"], scores[metric]["mean"],
                               rtol=1e-4, atol=1e-5)


class _Killed(Exception):
  pass


def test_killed_protocol_resumes_to_the_same_report(tmp_path, monkeypatch):
  config = _config("two_image")
  config.data.num_images = 16
  config.batch_size = 2                     # 3 composites: 2 batches
  config.methods = ("input_x_gradient",)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES * 2):
    whole = protocols.run_protocol(config, str(tmp_path / "whole"))
    save = streaming.EvaluationState.save

    def save_then_die(self):
      save(self)
      raise _Killed                         # killed right after a save

    monkeypatch.setattr(streaming.EvaluationState, "save", save_then_die)
    with pytest.raises(_Killed):
      protocols.run_protocol(config, str(tmp_path / "killed"))
    monkeypatch.setattr(streaming.EvaluationState, "save", save)
    assert os.path.exists(tmp_path / "killed" / "eval" / "state.npz")
    other = config.copy_and_resolve_references()
    other.faithfulness_steps = 3
    with pytest.raises(ValueError, match=r"other settings.*"
                       r"protocol\.faithfulness_steps"):
      protocols.run_protocol(other, str(tmp_path / "killed"))
    resumed = protocols.run_protocol(config, str(tmp_path / "killed"))
  assert resumed["scores"] == whole["scores"]
  assert not os.path.exists(tmp_path / "killed" / "eval" / "state.npz")
