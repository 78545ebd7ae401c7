"""The papers' real-data evaluation protocols, streamed.

``run_protocol(config, workdir)`` runs one protocol config of
``configs/protocols/`` (``evaluate.py --config configs/protocols/<x>.py
--workdir DIR`` calls it): a model (a zoo checkpoint behind its card's
normalisation, a lapjax run folder, or random weights for tests), a data
source (``tfds.data_source``, or an ImageNet-S-style folder) and one of:

* ``'faithfulness'`` (paper 004, Sec. 4.1; paper 000, Fig. 5): per
  method, POS / NEG / NPD (top-1 accuracy, 0-90 % removed), INS / DEL /
  IDD (softmax probability), SIC / AIC, each image explaining
  ``config.target`` (its label or the model's prediction), and keep-top-k
  accuracy (the image with only its top ``k`` fraction of pixels kept still
  classified as the model's prediction, ``k`` in ``keep_fractions``).
* ``'localization'`` (papers 002, 003): per method and present class
  (``multi_label``: one map per class present in the image, each against
  that class's boxes or mask; pairs below ``min_confidence`` left out),
  the localisation table of
  ``lapjax.evaluation.explanations`` plus the pointing game with a
  ``pointing_tolerance`` pixel tolerance (15 px, as the papers).
* ``'quad_grid'`` (paper 003, Sec. 4.1): 2x2 grids of four images of
  distinct classes of any classification source (``lapjax.data.grid``),
  explained for the four quadrant classes, RA / IoU / F1 against each
  quadrant (``lapjax.evaluation.grid_game.score_maps``), with and without
  Attribution Lens.
* ``'two_image'`` (paper 003, Sec. 4.2, Tables 2 and 12): two-image
  composites (``lapjax.evaluation.composites``), insertion and deletion
  with and without the lens, and their paired differences.

Every value is merged batch by batch into float64 running summaries
(``streaming.RunningSummary``: count, mean, centred sum of squares, NaN
count), so memory does not grow with ``num_images``; the state is saved
in ``workdir/eval/state.npz`` every ``save_every`` batches and a killed run
resumes (``streaming.EvaluationState``, which refuses other settings).

Every batch is sharded on the ``data`` axis of a mesh over every device of
every process, as in ``streaming``: each process loads its slice of the
batch (``streaming.local_indices``), the maps and the jittable scores are
computed on the mesh, the host-bound ones (SIC / AIC's WebP sizes, the
perturbation curves beside them, the grid scores) on each process's rows
and devices; the per-image values of the global batch (a batch's worth of
numbers) or the jitted sums reach every process, which merge the same
sums. Only valid rows count (padding enters no sum and no count). With
``config.multihost`` the processes join with
``jax.distributed.initialize()``; process 0 alone writes files
(``workdir/report.json``, ``workdir/report.md``, the state).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lapjax import metrics
from lapjax.attribution import lens_refine
from lapjax.attribution.checks import jit_checked
from lapjax.classifier import from_flax
from lapjax.data import grid
from lapjax.evaluation import (
  composites,
  explanations,
  grid_game,
  maps_on_disk,
  streaming,
)
from lapjax.evaluation.methods import method_classifiers, standard_methods
from lapjax.train import run_folder, sharding

PROTOCOLS = ("faithfulness", "localization", "quad_grid", "two_image")
TARGETS = ("label", "prediction")
FAITHFULNESS = ("pos", "neg", "npd", "ins", "del", "idd")


def base_protocol_config() -> ml_collections.ConfigDict:
  """Every protocol field with its default (``configs/protocols/*``)."""
  c = ml_collections.ConfigDict()
  c.protocol = "faithfulness"      # one of PROTOCOLS
  c.seed = 0                       # keys of stochastic methods, tiles, pairs
  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet50"        # a name in lapjax.models.MODELS
  c.model.kwargs = ml_collections.ConfigDict()   # model attributes
  c.model.checkpoint = ""          # pretrained file (load_pretrained), fed
  #   images in [0, 1] and normalised with the card's mean and std
  c.model.run = ""                 # or: a lapjax run folder (train.py)
  c.model.random_init = False      # or: random weights (tests only)
  c.model.num_classes = 1000       # logits (checkpoint / random_init)
  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds:imagenet2012"   # 'tfds:<name>', 'image_dir'
  #   (ImageNet-S layout) or 'coco' (instances JSON + image folder)
  c.data.split = "validation"      # tfds split string / image_dir split
  c.data.data_dir = ""             # tfds data_dir ('' = tfds default)
  c.data.manual_dir = ""           # where manual archives are (named in
  #   the error when the dataset is not prepared)
  c.data.root = ""                 # image_dir: the ImageNet-S folder;
  #   coco: the image folder (e.g. .../val2017)
  c.data.annotations = ""          # coco: instances_val2017.json
  c.data.class_list = ""           # image_dir: class folders in model order
  c.data.image_size = (224, 224)   # (H, W) given to the model
  c.data.resize_size = 256         # shorter side before the centre crop
  #   (0: resize to image_size); the card's resize_size for zoo models
  c.data.interpolation = "bilinear"
  c.data.num_images = 50_000       # at most this many source images
  c.data.multi_label = False       # detection data: one map per class
  c.data.min_object_fraction = 0.0  # drop smaller objects (COCO: 0.01)
  c.methods = ("grad_cam", "integrated_gradients", "input_x_gradient")
  c.layer = "stage4"               # CAM layer (the card's cam_layer)
  c.batch_size = 32                # images (grids, composites) per batch
  c.save_every = 20                # batches between saved states
  c.baseline = "zero"              # methods' baseline: 'zero' or 'blur'
  c.ig_steps = 32
  c.rise_masks = 500
  c.smoothgrad_samples = 16
  c.sloc_masks = 500
  c.sloc_steps = 501
  c.target = "prediction"          # faithfulness: explain 'label' or
  #   'prediction'
  c.faithfulness_steps = 20        # insertion / deletion points - 1
  c.sic_aic = True                 # SIC / AIC (WebP sizes on the host)
  c.keep_fractions = (0.1, 0.3, 0.5, 0.7, 0.9)  # keep-top-k (paper 000)
  c.pointing_tolerance = 15        # localization: pointing game, pixels
  c.min_confidence = 0.0           # localization: leave out (image, class)
  #   pairs whose softmax probability is lower (paper 003, COCO: 1e-4)
  c.num_grids = 256                # quad_grid: grids
  c.num_composites = 256           # two_image: composites
  c.pool_images = 2_000            # source images grids / pairs draw from
  c.centred_fraction = 0.8         # two_image: object pixels in the
  #   central band (sources with masks; paper 003)
  c.blur_sigma = 5.0               # two_image: insertion / deletion blur
  c.multihost = False              # jax.distributed.initialize() first
  #   (one process per host; every batch is split over every device)
  return c


def check_protocol_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for unknown fields or values, naming them."""
  known = base_protocol_config()

  def paths(c, prefix=""):
    for k, v in c.items():
      p = prefix + k
      yield p
      if isinstance(v, ml_collections.ConfigDict) and p != "model.kwargs":
        yield from paths(v, p + ".")

  unknown = sorted(set(paths(config)) - set(paths(known)))
  if unknown:
    raise ValueError(f"unknown protocol config field(s) {unknown}; the "
                     "fields are in lapjax/evaluation/protocols.py")
  if config.protocol not in PROTOCOLS:
    raise ValueError(f"config.protocol must be one of {PROTOCOLS}; got "
                     f"{config.protocol!r}")
  if config.target not in TARGETS:
    raise ValueError(f"config.target must be one of {TARGETS}; got "
                     f"{config.target!r}")
  m = config.model
  given = [k for k in ("checkpoint", "run", "random_init") if m[k]]
  if len(given) != 1:
    raise ValueError(f"set exactly one of config.model.checkpoint, "
                     f".run and .random_init; got {given or 'none'}")
  if config.baseline not in ("zero", "blur"):
    raise ValueError(f"config.baseline must be 'zero' or 'blur'; got "
                     f"{config.baseline!r}")


def load_model(config: ml_collections.ConfigDict, image_shape):
  """``(module, variables)`` of ``config.model``: images in [0, 1]."""
  m = config.model
  if m.run:
    from lapjax.evaluation.evaluate import load_run
    _, module, variables = load_run(m.run)
    return module, variables
  from lapjax.models import create_model, get_card, load_pretrained
  from lapjax.train.pretrained import Normalized
  kwargs = dict(m.kwargs)
  if m.random_init:
    module = create_model(m.name, num_classes=m.num_classes, **kwargs)
    variables = module.init(jax.random.key(config.seed),
                            jnp.zeros((1, *image_shape), jnp.float32))
    return module, variables
  card = get_card(m.name)
  module, variables = load_pretrained(m.name, m.checkpoint,
                                      num_classes=m.num_classes, **kwargs)
  return Normalized(module, tuple(card.mean), tuple(card.std)), variables


def make_protocol_source(config: ml_collections.ConfigDict):
  """The data source of ``config.data``."""
  d = config.data
  resize = int(d.resize_size) or None
  if d.source == "image_dir":
    from lapjax.data.image_dir import ImageDirSource
    return ImageDirSource(d.root, split=d.split, image_size=d.image_size,
                          resize_size=resize,
                          class_list=d.class_list or None,
                          max_examples=d.num_images)
  if d.source == "coco":
    from lapjax.data.coco import CocoSource
    return CocoSource(d.annotations, d.root, image_size=d.image_size,
                      resize_size=resize,
                      min_object_fraction=d.min_object_fraction,
                      max_examples=d.num_images)
  if d.source.startswith("tfds:"):
    from lapjax.data.tfds import TfdsSource
    return TfdsSource(d.source[len("tfds:"):], split=d.split,
                      image_size=d.image_size, data_dir=d.data_dir or None,
                      max_examples=d.num_images, resize_size=resize,
                      interpolation=d.interpolation,
                      multi_label=d.multi_label,
                      min_object_fraction=d.min_object_fraction,
                      manual_dir=d.manual_dir or None)
  raise ValueError(f"config.data.source must be 'tfds:<name>', "
                   f"'image_dir' or 'coco'; got {d.source!r}")


def _host_statistics(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """``streaming.value_statistics`` of host values (no validity codes)."""
  return np.asarray(streaming.value_statistics(
      jnp.asarray(values, jnp.float32), jnp.asarray(valid)))


@dataclasses.dataclass
class _Placement:
  """Where a protocol computes: ``mesh`` spans every device of every
  process (the batch sharded on its ``data`` axis); ``local_mesh`` is this
  process's devices (the whole mesh in one process), where the host-bound
  scores run on this process's rows (``local_plain``: the model placed
  there)."""
  mesh: jax.sharding.Mesh
  local_mesh: jax.sharding.Mesh
  local_plain: Any

  def local(self, rows: np.ndarray) -> jax.Array:
    """This process's rows, sharded over its own devices."""
    return jax.device_put(np.asarray(rows),
                          sharding.data_sharded(self.local_mesh))


def _gather_valid(valid: np.ndarray) -> np.ndarray:
  """The whole global batch's ``valid`` flags (every process)."""
  return streaming.gather(valid).astype(bool)


def run_protocol(config: ml_collections.ConfigDict, workdir: str, *,
                 progress: bool = False) -> dict[str, Any]:
  """Runs the protocol of ``config``; writes and returns the report.

  Every batch is sharded on the ``data`` axis of a mesh of every device
  of every process (each process loads its slice,
  ``streaming.local_indices``); per batch, the per-image values of the
  global batch reach every process (jitted sums replicated, or the few
  values gathered), so every process merges the same sums and holds the
  same report. Process 0 alone writes files. With ``config.multihost``
  (or after your own ``jax.distributed.initialize``) the processes join.

  Raises:
    ValueError: a bad config (named fields), an unknown method, a dataset
      that is not prepared (how to prepare it), a saved state of other
      settings in ``workdir/eval``, or a ``batch_size`` that the devices do
      not divide.
  """
  check_protocol_config(config)
  if config.multihost and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh,
                            name="config.batch_size")
  workdir = os.path.abspath(workdir)
  source = make_protocol_source(config)
  first = source.get(np.arange(1))
  image_shape = first["image"].shape[1:]
  module, variables = load_model(config, image_shape)
  placed = sharding.put_replicated(variables, mesh)
  key = jax.random.key(config.seed)
  baseline = 0.0 if config.baseline == "zero" else "blur"
  table = standard_methods(
      config.layer, key=key, image_size=int(image_shape[0]),
      ig_steps=config.ig_steps, rise_masks=config.rise_masks,
      smoothgrad_samples=config.smoothgrad_samples,
      sloc_masks=config.sloc_masks, sloc_steps=config.sloc_steps,
      baseline=baseline)
  unknown = [m for m in config.methods if m not in table]
  if unknown:
    raise ValueError(f"unknown config.methods {unknown}; available: "
                     f"{sorted(table)}")
  methods = {m: table[m] for m in config.methods}
  clfs = method_classifiers(methods, module, placed,
                            layers=[config.layer], input_shape=image_shape)
  clfs.setdefault("plain", from_flax(module, placed,
                                     layers=[config.layer]))
  if jax.process_count() == 1:
    where = _Placement(mesh, mesh, clfs["plain"])
  else:
    local_mesh = sharding.make_mesh(jax.local_devices())
    where = _Placement(mesh, local_mesh, from_flax(
        module, sharding.put_replicated(variables, local_mesh),
        layers=[config.layer]))
  # The sums do not depend on the processes: a run resumes on any number.
  settings = {k: v for k, v in config.to_dict().items() if k != "multihost"}
  state = streaming.EvaluationState(
      os.path.join(workdir, "eval"),
      {"protocol": settings, "num_examples": source.num_examples})
  state.restore()
  runner = {"faithfulness": _faithfulness, "localization": _localization,
            "quad_grid": _quad_grid, "two_image": _two_image}[
                config.protocol]
  batches, step = runner(config, source, methods, clfs, state, key, where)
  bar = streaming.Progress(len(batches),
                           state.next_batch.get(config.protocol, 0),
                           enabled=progress)
  streaming.run_phase(state, config.protocol, len(batches), step, bar,
                      save_every=config.save_every)
  bar.close()
  scores = {group: {name: s.result(with_codes=False)
                    for name, s in per.items()}
            for group, per in state.summaries.items()}
  report = {"workdir": workdir, "protocol": config.protocol,
            "model": config.model.name, "data": config.data.source,
            "split": config.data.split,
            "num_examples": int(source.num_examples),
            "batches": len(batches), "scores": scores,
            "counts": {k: np.asarray(v).tolist()
                       for k, v in state.counts.items()},
            "devices": {"devices": mesh.size,
                        "processes": jax.process_count()}}
  if config.protocol == "two_image":
    report["paired"] = _paired(scores)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    run_folder.atomic_write(os.path.join(workdir, "report.json"),
                            run_folder.dumps(report, indent=1))
    run_folder.atomic_write(os.path.join(workdir, "report.md"),
                            protocol_markdown(report))
  state.remove()
  return report


def _method_fn(m, clf):
  """The jitted (with the methods' checks) map function of a method."""
  return jit_checked(lambda x, t: m.fn(clf, x, t, **m.kwargs))


def _class_maps(maps: jax.Array, k: int) -> jax.Array:
  """``[B, K, H, W]`` maps of ``[B, K]`` targets; a label-free method's
  ``[B, H, W]`` map stands for every class."""
  if maps.ndim == 3:
    return jnp.broadcast_to(maps[:, None], (maps.shape[0], k,
                                            *maps.shape[1:]))
  return maps


def _faithfulness(config, source, methods, clfs, state, key, where):
  n = source.num_examples
  batches = streaming.batch_slices(n, config.batch_size)
  plain = clfs["plain"]
  predict_fn = jax.jit(lambda x: plain.apply(x)[0].argmax(-1).astype(
      jnp.int32))
  fns = {name: _method_fn(m, clfs[m.classifier])
         for name, m in methods.items()}
  baseline = 0.0 if config.baseline == "zero" else "blur"
  keep_fn = jax.jit(lambda x, maps, t: metrics.keep_top_accuracy(
      plain, x, maps, t, fractions=tuple(config.keep_fractions),
      baseline=baseline))

  def step(b):
    idx, valid = streaming.local_indices(*batches[b], config.batch_size)
    batch = source.get(idx)
    x = streaming.mesh_inputs(where.mesh, image=batch["image"])["image"]
    predicted = predict_fn(x)                      # [B], sharded
    mine = maps_on_disk.local_rows(predicted)      # this process's rows
    t = (batch["label"].astype(np.int32) if config.target == "label"
         else mine)
    targets = streaming.mesh_inputs(where.mesh, target=t)["target"]
    ok = _gather_valid(valid)
    # Maps and keep-top-k on the mesh; the host-bound perturbation scores
    # (WebP sizes for SIC / AIC) on this process's rows and devices.
    local_x = where.local(batch["image"])
    for name, fn in fns.items():
      maps = fn(x, targets)
      local_maps = where.local(maps_on_disk.local_rows(maps))
      values, _ = explanations.faithfulness_scores(
          where.local_plain, local_x, t, local_maps,
          key=key, steps=config.faithfulness_steps,
          batch_size=config.batch_size, baseline=baseline, sic_aic=False)
      if config.sic_aic:
        pic = metrics.sic_aic(where.local_plain, local_x, local_maps,
                              jnp.asarray(t), key=jax.random.fold_in(key, b))
        values.update(aic=pic["aic"], sic=pic["sic"])
        # Padding rows are not images: only valid rows are counted.
        skipped = streaming.gather(pic["skipped"]).astype(bool) & ok
        state.add_counts(f"sic_aic_skipped/{name}",
                         np.asarray(skipped.sum()))
      for metric, v in values.items():
        state.summary(name, metric).add(
            _host_statistics(streaming.gather(v), ok))
      keep = streaming.gather(keep_fn(x, maps, predicted))
      for j, f in enumerate(config.keep_fractions):
        state.summary(name, f"keep_top_{round(100 * f)}").add(
            _host_statistics(keep[:, j], ok))
    hit = streaming.gather(predicted) == streaming.gather(batch["label"])
    state.summary("model", "top1_accuracy").add(
        _host_statistics(hit.astype(np.float32), ok))

  return batches, step


def _localization(config, source, methods, clfs, state, key, where):
  n = source.num_examples
  batches = streaming.batch_slices(n, config.batch_size)
  tol = int(config.pointing_tolerance)

  plain = clfs["plain"]

  def per_batch(fn):
    def stats(x, t, masks, valid):
      b, k = t.shape
      maps = _class_maps(fn(x, jnp.maximum(t, 0)), k)   # [B, K, H, W]
      flat_maps = maps.reshape(b * k, *maps.shape[2:])
      flat_masks = masks.reshape(b * k, *masks.shape[2:])
      probs = jax.nn.softmax(plain.apply(x)[0])
      confident = jnp.take_along_axis(probs, jnp.maximum(t, 0), 1) >= (
          config.min_confidence)
      ok = (valid[:, None] & (t >= 0) & confident).reshape(-1)
      out = streaming.localization_statistics(flat_maps, flat_masks, ok)
      codes = metrics.validity(flat_maps, flat_masks)
      out[f"pointing_game_{tol}px"] = streaming.value_statistics(
          metrics.pointing_game(flat_maps, flat_masks, tolerance=tol), ok,
          codes)
      return streaming.replicate(out, where.mesh)
    return jit_checked(stats)

  fns = {name: per_batch(lambda x, t, m=m, c=clfs[m.classifier]:
                         m.fn(c, x, t, **m.kwargs))
         for name, m in methods.items()}

  def step(b):
    idx, valid = streaming.local_indices(*batches[b], config.batch_size)
    batch = source.get(idx)
    if "labels" in batch:                               # one per class
      t, masks = batch["labels"], batch["class_masks"]
    else:
      t, masks = batch["label"][:, None], batch["mask"][:, None]
    x = streaming.mesh_inputs(where.mesh, image=batch["image"],
                              target=np.asarray(t, np.int32), mask=masks,
                              valid=valid)
    for name, fn in fns.items():
      stats = jax.device_get(fn(x["image"], x["target"], x["mask"],
                                x["valid"]))
      state.add_counts(f"status/{name}", stats.pop("status"))
      for metric, value in stats.items():
        state.summary(name, metric).add(np.asarray(value, np.float64))

  return batches, step


def _pool_labels(source, pool: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices and labels of the first ``pool`` images of ``source``."""
  idx = np.arange(min(pool, source.num_examples))
  return idx, np.concatenate([source.get(idx[i:i + 256])["label"]
                              for i in range(0, len(idx), 256)])


def _quad_grid(config, source, methods, clfs, state, key, where):
  idx, labels = _pool_labels(source, config.pool_images)
  tiles = idx[grid.choose_tiles(labels, config.num_grids,
                                seed=config.seed)]
  batches = streaming.batch_slices(len(tiles), config.batch_size)
  fns = {name: _method_fn(m, clfs[m.classifier])
         for name, m in methods.items()}

  def step(b):
    rows, valid = streaming.local_indices(*batches[b], config.batch_size)
    mine = tiles[rows]
    batch = source.get(mine.reshape(-1))
    grids = grid.make_grids(batch, np.arange(len(mine) * 4).reshape(-1, 4))
    grids.setdefault("mask", grids["quadrant_mask"])   # no object masks
    x = streaming.mesh_inputs(where.mesh, image=grids["image"],
                              labels=grids["labels"].astype(np.int32))
    ok = np.repeat(_gather_valid(valid), grid.QUADRANTS)
    for name, fn in fns.items():
      # Maps on the mesh; this process scores its own grids.
      maps = _class_maps(jnp.asarray(maps_on_disk.local_rows(
          fn(x["image"], x["labels"]))), grid.QUADRANTS)
      variants = {name: maps}
      if not methods[name].label_free:
        variants[name + "+AL"] = lens_refine(maps)
      for variant, v in variants.items():
        for metric, values in grid_game.score_maps(v, grids).items():
          if metric.endswith("_clue") and "mask" not in batch:
            continue
          state.summary(variant, metric).add(
              _host_statistics(streaming.gather(values), ok))

  return batches, step


def _two_image(config, source, methods, clfs, state, key, where):
  idx, labels = _pool_labels(source, config.pool_images)
  if "mask" in source.get(idx[:1]):
    masks = np.concatenate([source.get(idx[i:i + 256])["mask"]
                            for i in range(0, len(idx), 256)])
    keep = composites.centred(masks, fraction=config.centred_fraction)
    idx, labels = idx[keep], labels[keep]
  pairs = idx[composites.choose_pairs(labels, config.num_composites,
                                      seed=config.seed)]
  batches = streaming.batch_slices(len(pairs), config.batch_size)
  fns = {name: _method_fn(m, clfs[m.classifier])
         for name, m in methods.items() if not m.label_free}
  plain = clfs["plain"]

  @functools.partial(jax.jit, static_argnames="lens")
  def scorer(x, t, maps, lens):
    return composites.composite_insertion_deletion(
        plain, x, t, composites.with_lens(maps) if lens else maps,
        steps=config.faithfulness_steps, blur_sigma=config.blur_sigma)

  def step(b):
    rows, valid = streaming.local_indices(*batches[b], config.batch_size)
    mine = pairs[rows]
    batch = source.get(mine.reshape(-1))
    comp = composites.make_composites(
        batch, np.arange(2 * len(mine)).reshape(-1, 2))
    x = streaming.mesh_inputs(where.mesh, image=comp["image"],
                              labels=comp["labels"].astype(np.int32))
    ok = np.repeat(_gather_valid(valid), composites.SIDES)
    for name, fn in fns.items():
      maps = fn(x["image"], x["labels"])
      scores = {}
      for lens in (False, True):
        out = scorer(x["image"], x["labels"], maps, lens=lens)
        scores[lens] = {k: np.ravel(streaming.gather(v))
                        for k, v in out.items()}
      for metric in ("ins", "del", "idd"):
        b_, l_ = scores[False][metric], scores[True][metric]
        state.summary(name, metric).add(_host_statistics(b_, ok))
        state.summary(name + "+AL", metric).add(_host_statistics(l_, ok))
        state.summary(name + "+AL-base", metric).add(
            _host_statistics(l_ - b_, ok))

  return batches, step


def _paired(scores: Mapping[str, Any]) -> dict[str, Any]:
  """Mean paired difference (lens - base), its standard error and the
  relative change, per method and metric of a two-image report."""
  out = {}
  for name, per in scores.items():
    if not name.endswith("+AL-base"):
      continue
    method = name[:-len("+AL-base")]
    out[method] = {}
    for metric, d in per.items():
      n = d["n"]
      se = d["std"] * np.sqrt(n / (n - 1)) / np.sqrt(n) if n > 1 else np.nan
      base = scores[method][metric]["mean"]
      lens = scores[method + "+AL"][metric]["mean"]
      out[method][metric] = {
          "diff": d["mean"], "diff_se": float(se),
          "relative": float(lens / base - 1) if base else float("nan")}
  return out


def protocol_markdown(report: Mapping[str, Any]) -> str:
  """The report as Markdown: one row per method, one column per metric."""
  lines = [f"# {report['protocol']} protocol: {report['model']} on "
           f"{report['data']} ({report['split']})", "",
           f"{report['num_examples']} source images, {report['batches']} "
           "batches; mean (n) per metric.", ""]
  metric_names: list[str] = []
  for per in report["scores"].values():
    for k in per:
      if k not in metric_names:
        metric_names.append(k)
  lines.append("| method | " + " | ".join(metric_names) + " |")
  lines.append("|---|" + "---|" * len(metric_names))
  for name, per in report["scores"].items():
    cells = [f"{per[k]['mean']:.4f} ({per[k]['n']})" if k in per else ""
             for k in metric_names]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  if "paired" in report:
    lines += ["", "| method | metric | lens - base | SE | change |",
              "|---|---|---|---|---|"]
    for name, per in report["paired"].items():
      for metric, d in per.items():
        lines.append(f"| {name} | {metric} | {d['diff']:+.3f} | "
                     f"{d['diff_se']:.3f} | {100 * d['relative']:+.1f} % |")
  return "\n".join(lines) + "\n"
