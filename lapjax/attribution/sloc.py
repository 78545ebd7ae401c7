"""SLOC: soft local completeness (paper 004), compiled end to end.

An attribution map ``a [H, W]`` is fitted so that, for many random masks
``m``, the sum of ``a`` over the kept pixels matches the model's response to
the masked input ``x * m + b * (1 - m)``. Defaults follow the authors'
released code (REFERENCE-NOTES.md, SLOC), which differs from the paper's
formula in its scalings:

* masks: square grid cells of ``side / 7`` and ``side / 4`` pixels (32 and 56
  at 224), random phase, each cell on with probability ``p``; 500 masks per
  patch size; ``p`` tuned per input and patch size (``tune_p``);
* responses ``r_m = (p_y(x_m) - p_y(b)) * C * H * W`` (softmax probability of
  the explained class; ``response='logit'`` uses logits);
* initial map ``N(3, 0.2^2)`` per pixel, rescaled to sum to
  ``S = (p_y(x) - p_y(b)) * C * H * W``;
* loss ``1.0 * mean_m (sum(a m) - r_m)^2 / (2 |m| H W)``
  ``+ 0.1 * (mean of squared horizontal + vertical neighbour differences)``
  ``+ 0.01 * mean |a|`` (``sloc_loss``);
* Adam (0.9, 0.999, 1e-8), learning rate 0.1, constant (``lr_decay=(45,
  0.9)`` gives the paper's step decay), 501 full-batch steps in one
  ``lax.scan`` (``sloc_fit``).

Variants: ``sloc_xp`` (one ``p`` per model, from ``calibrate_p``) and
``sloc_m`` (keeps the map with the best insertion-minus-deletion score,
monitored every 15 steps).

Grid masks take the structured path: ``sum(a * m)`` from a summed-area table
and its gradient from a difference array (``grid_masks.masked_sums``), the
same loss and gradient as the dense path in a fraction of the time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lapjax.attribution import checks, core
from lapjax.attribution import grid_masks as gm
from lapjax.classifier import Classifier

# The released code's candidates, in its tie-break order (earliest wins).
P_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.2, 0.25, 0.35, 0.45, 0.55, 0.65,
                0.75, 0.8)
LOSS_WEIGHTS = (1.0, 0.1, 0.01)   # completeness, smoothness, magnitude
MONITOR_LEVELS = 11               # SLOC_m quantile levels 0, 0.1, ..., 1
NON_FINITE_OUTPUTS = ("the model's outputs on the masked inputs (or on x or "
                      "the baseline) must be finite; got outputs that are "
                      "not finite (NaN or inf): SLOC's responses would be "
                      "NaN or inf")


# -- the fitting step ---------------------------------------------------------

def initial_map(key: jax.Array, size: tuple[int, int], total) -> jax.Array:
  """``[H, W]``: ``N(3, 0.2^2)`` per pixel, rescaled to sum to ``total``."""
  a = 3.0 + 0.2 * jax.random.normal(key, size, jnp.float32)
  return a * (jnp.asarray(total, jnp.float32) / jnp.sum(a))


def sloc_loss(a: jax.Array, masks: gm.Masks, responses: jax.Array,
              sizes: jax.Array,
              weights: tuple[float, float, float] = LOSS_WEIGHTS
              ) -> jax.Array:
  """The SLOC loss of one map with the released code's scalings.

  Args:
    a: ``[H, W]`` map.
    masks: dense ``[N, H, W]`` or grid masks (``grid_masks``).
    responses: ``[N]`` target sums ``r_m``.
    sizes: ``[N]`` on pixels ``|m|`` (``grid_masks.mask_sizes``).
    weights: completeness, smoothness and magnitude weights.
  """
  h, w = a.shape
  gap = gm.masked_sums(a, masks) - responses
  completeness = jnp.mean(gap ** 2 / (2.0 * sizes * h * w))
  smoothness = (jnp.mean((a[:, :-1] - a[:, 1:]) ** 2)
                + jnp.mean((a[:-1] - a[1:]) ** 2))
  # |a| with PyTorch's subgradient 0 at a = 0 (JAX's is 1), so a map that
  # starts at 0 (a model with no response) stays 0 as in the released code.
  magnitude = jnp.mean(a * jax.lax.stop_gradient(jnp.sign(a)))
  return (weights[0] * completeness + weights[1] * smoothness
          + weights[2] * magnitude)


def monitor_steps(steps: int, every: int, start: int) -> tuple[int, ...]:
  """Steps (maps after that many updates) that SLOC_m scores: every
  ``every``-th step from ``start`` on, and the last one."""
  core.check_positive("monitor_every", every)
  picked = [t for t in range(max(start, 1), steps + 1) if t % every == 0]
  return tuple(sorted(set(picked) | {steps}))


def _check_dense_masks(masks: jax.Array, size: tuple[int, int]) -> None:
  """Dense masks must be ``[N, H, W]`` of 0/1 (bool, int or float)."""
  if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(size):
    raise ValueError(f"masks must be [N, H, W] = [N, {size[0]}, {size[1]}]; "
                     f"got shape {masks.shape}")
  if not (masks.dtype == jnp.bool_
          or jnp.issubdtype(masks.dtype, jnp.integer)
          or jnp.issubdtype(masks.dtype, jnp.floating)):
    raise ValueError(f"masks must be bool, int or float 0/1; got dtype "
                     f"{masks.dtype}")
  if core._is_concrete(masks):
    values = np.unique(np.asarray(masks))
    if not np.all(np.isin(values, (0, 1))):
      raise ValueError(f"masks must be binary (0/1); got values "
                       f"{values[:8]}")


def _refuse_empty(sizes: jax.Array) -> None:
  """Masks with no pixel on make the completeness term undefined."""
  message = ("masks must have at least one pixel on; got {} masks with no "
             "pixel on (their completeness term is undefined): drop or "
             "redraw them")
  empty = jnp.sum(sizes == 0)
  if core._is_concrete(sizes):
    if int(empty):
      raise ValueError(message.format(int(empty)))
  else:
    core.check_traced(empty == 0, message, empty)


def _check_fit_inputs(masks, responses, init) -> None:
  if init.ndim != 2:
    raise ValueError(f"init must be one [H, W] map; got shape {init.shape}")
  if gm.is_grid(masks):
    n = sum(m.cells.shape[0] for m in gm.as_list(masks))
  else:
    _check_dense_masks(masks, init.shape)
    n = masks.shape[0]
  if n < 1:
    raise ValueError("masks must hold at least one mask (the completeness "
                     "term is a mean over masks); got 0")
  if responses.shape != (n,):
    raise ValueError(f"responses must be [N] = [{n}] (one per mask); got "
                     f"shape {responses.shape}")
  message = ("responses must be finite; got NaN or inf: the model's "
             "outputs on the masked inputs are not finite")
  if core._is_concrete(responses):
    if not np.all(np.isfinite(np.asarray(responses))):
      raise ValueError(message)
  else:
    core.check_traced(jnp.all(jnp.isfinite(responses)), message)


def sloc_fit(masks: gm.Masks, responses: jax.Array, init: jax.Array, *,
             steps: int = 501, learning_rate: float = 0.1,
             lr_decay: tuple[int, float] | None = None,
             weights: tuple[float, float, float] = LOSS_WEIGHTS,
             snapshots: Sequence[int] = ()
             ) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Fits one SLOC map to masks and responses (no model involved).

  Usable on its own, e.g. with responses computed by another framework: the
  map minimises ``sloc_loss`` with Adam (β 0.9, 0.999, ε 1e-8) for ``steps``
  full-batch steps inside one ``lax.scan``. ``jax.vmap`` it for batches.

  Args:
    masks: dense ``[N, H, W]`` 0/1 masks (any shape of kept region), or grid
      masks (``grid_masks.GridMasks`` or a sequence of them; exact and much
      faster).
    responses: ``[N]`` the response ``r_m`` to each masked input, in the
      units the map should carry (SLOC scales probabilities by ``C*H*W``).
    init: ``[H, W]`` initial map (``initial_map`` gives SLOC's: the target
      total only enters here).
    steps: optimiser steps.
    learning_rate: Adam's learning rate.
    lr_decay: ``(every, factor)``: multiply the learning rate by ``factor``
      every ``every`` steps (the paper: ``(45, 0.9)``); None: constant (the
      released code).
    weights: completeness, smoothness and magnitude weights.
    snapshots: steps (maps after that many updates, in ``[1, steps]``) whose
      maps are also returned (SLOC_m scores them).

  Returns:
    The final map ``[H, W]``, or ``(map, maps [len(snapshots), H, W])``.
    A mask with no pixel on, or a non-finite response, raises a
    ``ValueError`` on concrete inputs; under ``jit`` it makes the map NaN
    (``checks.jit_checked`` raises the same error).

  Adam's normalised steps amplify round-off once the completeness gaps are
  small, so float32 maps of different summation orders (the two paths, or
  float64) drift apart by up to a few 1e-3 relative over 501 steps at
  224 x 224 (docs/benchmarks.md); each is as accurate as the other.
  """
  responses = jnp.asarray(responses, jnp.float32)
  init = jnp.asarray(init, jnp.float32)
  if not gm.is_grid(masks):
    masks = jnp.asarray(masks)
  _check_fit_inputs(masks, responses, init)
  core.check_positive("steps", steps)
  sizes = gm.mask_sizes(masks)
  _refuse_empty(sizes)
  if not gm.is_grid(masks):
    masks = masks.astype(jnp.float32)
  snaps = tuple(int(s) for s in snapshots)
  if any(not 1 <= s <= steps for s in snaps):
    raise ValueError(f"snapshots must be steps in [1, {steps}]; got {snaps}")
  if lr_decay is None:
    schedule = learning_rate
  else:
    every, factor = lr_decay
    schedule = optax.exponential_decay(learning_rate, int(every), factor,
                                       staircase=True)
  opt = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
  grad = jax.grad(functools.partial(sloc_loss, masks=masks,
                                    responses=responses, sizes=sizes,
                                    weights=weights))
  # slot[t - 1]: where the map after update t goes (len(snaps) = discard).
  slot = np.full(steps, len(snaps), np.int32)
  slot[[s - 1 for s in snaps]] = np.arange(len(snaps))
  buffer = jnp.zeros((len(snaps) + 1, *init.shape), jnp.float32)

  def step(carry, slot_t):
    a, state, buf = carry
    updates, state = opt.update(grad(a), state)
    a = a + updates
    return (a, state, buf.at[slot_t].set(a)), None

  (a, _, buf), _ = jax.lax.scan(step, (init, opt.init(init), buffer),
                                jnp.asarray(slot))
  return (a, buf[:-1]) if snaps else a


# -- masks and responses -------------------------------------------------------

def default_patch_sizes(size: tuple[int, int]) -> tuple[int, int]:
  """1/7 and 1/4 of the shorter side (32 and 56 pixels at 224)."""
  side = min(size)
  return max(1, round(side / 7)), max(1, round(side / 4))


def sample_masks(key: jax.Array, size: tuple[int, int],
                 patch_sizes: Sequence[int], p, num_masks: int
                 ) -> tuple[gm.GridMasks, ...]:
  """``num_masks`` grid masks per patch size; ``p`` is one probability, one
  per patch size, or ``[..., patch sizes]`` for a batch of mask sets (masks
  ``[..., num_masks, ...]``; may be traced). Patch size ``k`` draws from
  ``fold_in(key, k)``, mask ``i`` from ``fold_in(fold_in(key, k), i)``
  whatever the batch (``grid_masks.sample_grid_masks``)."""
  core.check_positive("num_masks", num_masks)
  ps = jnp.asarray(p, jnp.float32)
  if ps.ndim == 0:
    ps = jnp.broadcast_to(ps, (len(patch_sizes),))
  if ps.shape[-1] != len(patch_sizes):
    raise ValueError(f"p must be one probability or one per patch size "
                     f"({len(patch_sizes)}) on its last axis; got shape "
                     f"{ps.shape}")
  batch = ps.shape[:-1]
  out = []
  for k, s in enumerate(patch_sizes):
    base = jax.random.fold_in(key, k)
    keys = jax.vmap(lambda i, base=base: jax.random.fold_in(base, i))(
        jnp.arange(num_masks))
    out.append(gm.sample_grid_masks_batched(
        jnp.broadcast_to(keys, (*batch, num_masks)), size, s,
        ps[..., k, None]))
  return tuple(out)


class _Problem(NamedTuple):
  """Images paired with one explained output each (``P`` pairs)."""
  x: jax.Array          # [P, H, W, C]
  base: jax.Array       # [P, H, W, C] baseline
  cot: jax.Array        # [P, K] output cotangent (one-hot class)
  response: str         # 'prob' or 'logit'


def _scores(classifier: Classifier, images: jax.Array, cot: jax.Array,
            response: str) -> jax.Array:
  """``[P * n, ...]`` images (pair-major) -> ``[P, n]`` scores."""
  out = classifier.apply(images)[0]
  if response == "prob":
    out = jax.nn.softmax(out)
  out = out.reshape(cot.shape[0], -1, out.shape[-1])
  return jnp.einsum("pnk,pk->pn", out, cot)


def _masked_scores(classifier: Classifier, problem: _Problem, fetch,
                   n: int, chunk_size: int) -> jax.Array:
  """Scores ``[P, n]`` of ``x * m + b * (1 - m)``; ``fetch(idx)`` returns the
  dense masks ``[P, len(idx), H, W]`` of mask indices ``idx``; at most
  ``chunk_size`` images per forward pass."""
  p = problem.x.shape[0]

  def chunk(idx):                                  # [c] -> [c, P]
    m = fetch(idx)[..., None]                      # [P, c, H, W, 1]
    xs = problem.x[:, None] * m + problem.base[:, None] * (1 - m)
    return _scores(classifier, xs.reshape(-1, *problem.x.shape[1:]),
                   problem.cot, problem.response).T

  # As many passes as chunk_size needs, evenly filled (little padding).
  per_pass = core.points_per_pass(chunk_size, p)
  per_pass = -(-n // -(-n // per_pass))
  return core.chunked_map(chunk, jnp.arange(n), per_pass).T


def _grid_scores(classifier: Classifier, problem: _Problem,
                 masks: Sequence[gm.GridMasks], chunk_size: int) -> jax.Array:
  """Scores ``[P, N]`` for per-pair grid mask sets (each ``[P, n_k, ...]``),
  concatenated in order; dense masks exist one chunk at a time."""
  size = problem.x.shape[1:3]
  out = []
  for ms in masks:
    def fetch(idx, ms=ms):
      return jax.vmap(lambda m: m.to_dense(size))(
          jax.tree.map(lambda v: v[:, idx], ms))
    out.append(_masked_scores(classifier, problem, fetch,
                              ms.cells.shape[1], chunk_size))
  return jnp.concatenate(out, axis=1)


def _response_spread(classifier: Classifier, problem: _Problem,
                     key: jax.Array, *, patch_sizes: Sequence[int],
                     candidates: Sequence[float], num_masks: int,
                     chunk_size: int) -> jax.Array:
  """``[P, patch sizes, candidates]``: standard deviation (ddof 1) of the
  responses to ``num_masks`` masks at each candidate ``p``. Candidate ``c``
  of patch size ``k`` draws from ``fold_in(fold_in(key, c), k)``."""
  check_tune_masks(num_masks)
  for cand in candidates:
    gm.check_p(cand)
  size = problem.x.shape[1:3]
  pairs, n_c = problem.x.shape[0], len(candidates)
  cands = jnp.asarray(candidates, jnp.float32)
  out = []
  for k, s in enumerate(patch_sizes):
    keys = jax.vmap(lambda c, k=k: jax.vmap(
        lambda i: jax.random.fold_in(jax.random.fold_in(
            jax.random.fold_in(key, c), k), i))(jnp.arange(num_masks)))(
                jnp.arange(n_c))                      # [n_c, N]
    masks = gm.sample_grid_masks_batched(keys, size, s, cands[:, None])
    joined = jax.tree.map(lambda v: jnp.broadcast_to(
        v.reshape(n_c * num_masks, *v.shape[2:]),
        (pairs, n_c * num_masks, *v.shape[2:])), masks)
    scores = _grid_scores(classifier, problem, [joined], chunk_size)
    out.append(jnp.std(scores.reshape(pairs, n_c, num_masks), axis=-1,
                       ddof=1))
  return jnp.stack(out, axis=1)


def check_tune_masks(tune_masks: int) -> None:
  """The spread is a standard deviation with ddof 1: it needs two masks."""
  if int(tune_masks) < 2:
    raise ValueError(f"tune_masks must be >= 2 (p is tuned on the standard "
                     f"deviation, ddof 1, of the responses); got "
                     f"{tune_masks}")


def tune_p(classifier: Classifier, problem: _Problem, key: jax.Array, *,
           patch_sizes: Sequence[int], candidates: Sequence[float],
           num_masks: int, chunk_size: int) -> jax.Array:
  """``[P, patch sizes]``: per pair and patch size, the candidate whose
  responses spread most (``_response_spread``); ties go to the earliest."""
  spread = _response_spread(classifier, problem, key,
                            patch_sizes=patch_sizes, candidates=candidates,
                            num_masks=num_masks, chunk_size=chunk_size)
  return jnp.asarray(candidates, jnp.float32)[jnp.argmax(spread, -1)]


# -- SLOC_m: insertion minus deletion over quantile levels -------------------

def quantile_idd(classifier: Classifier, problem: _Problem, maps: jax.Array,
                 *, chunk_size: int) -> jax.Array:
  """``[P, S]`` insertion AUC minus deletion AUC of maps ``[P, S, H, W]``.

  The released SLOC_m score: at the 11 quantiles ``q`` of the map (levels 0,
  0.1, ..., 1), deletion keeps pixels with ``a < q``, insertion keeps
  pixels with ``a > q``; removed pixels take the baseline; score = the
  explained class's softmax probability; AUC = mean of the 10 trapezoids.
  """
  levels = jnp.linspace(0.0, 1.0, MONITOR_LEVELS)
  pairs, snaps = maps.shape[:2]
  q = jnp.quantile(maps.reshape(pairs, snaps, -1), levels, axis=-1)
  q = jnp.moveaxis(q, 0, -1)                                   # [P, S, L]

  def fetch(idx):                  # idx = (snapshot * 2 + kind) * L + level
    snap, rest = idx // (2 * MONITOR_LEVELS), idx % (2 * MONITOR_LEVELS)
    a = maps[:, snap]                                          # [P, n, H, W]
    t = q[:, snap, rest % MONITOR_LEVELS][..., None, None]
    insert = (rest < MONITOR_LEVELS)[None, :, None, None]
    return jnp.where(insert, a > t, a < t).astype(jnp.float32)

  s = _masked_scores(classifier, problem._replace(response="prob"), fetch,
                     snaps * 2 * MONITOR_LEVELS, chunk_size)
  s = s.reshape(pairs, snaps, 2, MONITOR_LEVELS)
  auc = (s[..., 1:] + s[..., :-1]).mean(-1) / 2
  return auc[:, :, 0] - auc[:, :, 1]


# -- the method ----------------------------------------------------------------

def _make_problem(x: jax.Array, t: core.Targets, baseline, blur_sigma: float,
                  response: str) -> _Problem:
  """Pairs ``[C' * B]`` (class-major) of images, baselines and cotangents."""
  if response not in ("prob", "logit"):
    raise ValueError(f"response must be 'prob' or 'logit'; got {response!r}")
  n = t.cotangents.shape[0]
  return _Problem(x=jnp.tile(x, (n, 1, 1, 1)),
                  base=jnp.tile(core.baseline_images(x, baseline, blur_sigma),
                                (n, 1, 1, 1)),
                  cot=t.cotangents.reshape(n * x.shape[0], -1),
                  response=response)


def sloc(classifier: Classifier, x: jax.Array, targets, *, key: jax.Array,
         p: float | Sequence[float] | None = None,
         patch_sizes: Sequence[int] | None = None, num_masks: int = 500,
         masks: jax.Array | None = None,
         p_candidates: Sequence[float] = P_CANDIDATES, tune_masks: int = 50,
         steps: int = 501, learning_rate: float = 0.1,
         lr_decay: tuple[int, float] | None = None,
         weights: tuple[float, float, float] = LOSS_WEIGHTS,
         response: str = "prob", baseline=0.0, blur_sigma: float = 5.0,
         path: str = "structured", monitor_from: int | None = None,
         monitor_every: int = 15, chunk_size: int = 64) -> jax.Array:
  """SLOC attribution maps (paper 004 with the released defaults).

  Args:
    classifier: the model.
    x: ``[B, H, W, C]``.
    targets: ``[B]``, ``[B, C']`` int or ``[B, K]`` float (the response is
      then ``cot . softmax``). Each (image, target) pair is fitted on its own.
    key: a ``jax.random.key``; masks, ``p`` tuning and the initial map draw
      from it, the same way for every image, so an image's map does not
      depend on its batch and the same key gives identical maps.
    p: None tunes ``p`` per input and patch size (SLOC); a number, or one per
      patch size, fixes it (SLOC_xp, see ``calibrate_p``).
    patch_sizes: cell sides in pixels; default ``default_patch_sizes``.
    num_masks: masks per patch size.
    masks: optional dense ``[N, H, W]`` 0/1 masks shared by all images,
      instead of sampled grid masks (always the dense path; ``p`` unused).
    p_candidates: ``p`` tuning candidates, earliest wins ties.
    tune_masks: masks per candidate and patch size for tuning.
    steps, learning_rate, lr_decay, weights: see ``sloc_fit``.
    response: ``'prob'`` (softmax, default) or ``'logit'``.
    baseline: see ``core.baseline_images`` (default 0).
    blur_sigma: Gaussian sigma of ``baseline='blur'``.
    path: ``'structured'`` (summed-area tables; grid masks only) or
      ``'dense'`` (the same fit on dense masks, for checking).
    monitor_from: None for SLOC; a step for SLOC_m: from there on, every
      ``monitor_every`` steps and at the last, the map is scored by
      ``quantile_idd`` and the best is returned.
    monitor_every: SLOC_m's interval.
    chunk_size: images per forward pass.

  Returns:
    ``[B, H, W]`` (or ``[B, C', H, W]``) signed, unnormalised maps at input
    resolution. A model whose outputs are not finite raises a
    ``ValueError``; under an outer ``jit`` the maps are NaN instead, and
    ``checks.jit_checked`` raises the same error. A model whose response to
    every mask is the same gives a zero map.

  References:
    "Soft Local Completeness: Rethinking Completeness in XAI" (paper 004).
  """
  x, t = core.prepare(classifier, x, targets)
  if path not in ("structured", "dense"):
    raise ValueError(f"path must be 'structured' or 'dense'; got {path!r}")
  core.check_positive("num_masks", num_masks)
  if p is None and masks is None:
    check_tune_masks(tune_masks)
  core.check_positive("steps", steps)
  if core._is_concrete(x):
    checks.warn_suspect_inputs(classifier, x)
  size = x.shape[1:3]
  patch_sizes = tuple(int(s) for s in
                      (patch_sizes or default_patch_sizes(size)))
  for s in patch_sizes:
    if not 1 <= s <= min(size):
      raise ValueError(f"patch_sizes must be in [1, {min(size)}] pixels for "
                       f"{size} images; got {patch_sizes}")
  if p is not None:
    p = tuple(float(v) for v in np.broadcast_to(np.asarray(p, np.float32),
                                                (len(patch_sizes),)))
    gm.check_p(p)
    for s, ps in zip(patch_sizes, p):
      gm.check_p_for_grid(ps, size, s)
  for cand in p_candidates:
    gm.check_p(cand)
    if p is None and masks is None:
      for s in patch_sizes:
        gm.check_p_for_grid(cand, size, s)
  if masks is not None:
    masks = jnp.asarray(masks)
    _check_dense_masks(masks, size)
    masks = masks.astype(jnp.float32)
    _refuse_empty(gm.mask_sizes(masks))
  problem = _make_problem(x, t, baseline, blur_sigma, response)
  snaps = () if monitor_from is None else monitor_steps(steps, monitor_every,
                                                        monitor_from)
  maps, finite = _sloc(
      classifier, problem.x, problem.base, problem.cot, key, masks,
      response=response, p=p, patch_sizes=patch_sizes, num_masks=num_masks,
      p_candidates=tuple(p_candidates), tune_masks=tune_masks, steps=steps,
      learning_rate=learning_rate,
      lr_decay=None if lr_decay is None else tuple(lr_decay),
      weights=tuple(weights), path=path, snapshots=snaps,
      chunk_size=chunk_size)
  if core._is_concrete(finite) and not bool(finite):
    raise ValueError(NON_FINITE_OUTPUTS)
  return core.finish(maps.reshape(t.cotangents.shape[0], *x.shape[:3]), t)


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "response", "p", "patch_sizes", "num_masks", "p_candidates",
    "tune_masks", "steps", "learning_rate", "lr_decay", "weights", "path",
    "snapshots", "chunk_size"))
def _sloc(classifier: Classifier, x, base, cot, key, masks, *, response, p,
          patch_sizes, num_masks, p_candidates, tune_masks, steps,
          learning_rate, lr_decay, weights, path, snapshots, chunk_size
          ) -> tuple[jax.Array, jax.Array]:
  """``([P, H, W] maps, whether all responses are finite)`` of validated
  pairs (compiled once per setting)."""
  problem = _Problem(x, base, cot, response)
  pairs, h, w, c = x.shape
  size = (h, w)
  k_tune, k_masks, k_init = jax.random.split(key, 3)
  scale = float(c * h * w)
  ends = _scores(classifier, jnp.concatenate([x, base]),
                 jnp.tile(cot, (2, 1)), response).reshape(2, pairs)
  total = (ends[0] - ends[1]) * scale                          # [P]
  if masks is not None:
    fit_masks = jnp.broadcast_to(masks, (pairs, *masks.shape))
    raw = _masked_scores(classifier, problem, lambda idx: fit_masks[:, idx],
                         masks.shape[0], chunk_size)
    path = "dense"
  else:
    if p is None:
      chosen = tune_p(classifier, problem, k_tune, patch_sizes=patch_sizes,
                      candidates=p_candidates, num_masks=tune_masks,
                      chunk_size=chunk_size)                   # [P, S]
    else:
      chosen = jnp.broadcast_to(jnp.asarray(p), (pairs, len(patch_sizes)))
    fit_masks = sample_masks(k_masks, size, patch_sizes, chosen, num_masks)
    raw = _grid_scores(classifier, problem, fit_masks, chunk_size)
  responses = (raw - ends[1][:, None]) * scale                 # [P, N]
  finite = jnp.all(jnp.isfinite(responses)) & jnp.all(jnp.isfinite(total))
  core.check_traced(finite, NON_FINITE_OUTPUTS)     # before sloc_fit's own
  init = jax.vmap(lambda s: initial_map(k_init, size, s))(total)
  fit = functools.partial(sloc_fit, steps=steps, learning_rate=learning_rate,
                          lr_decay=lr_decay, weights=weights,
                          snapshots=snapshots)
  if path == "dense":
    if not isinstance(fit_masks, jax.Array):
      fit_masks = jax.vmap(lambda ms: gm.to_dense(ms, size))(fit_masks)
    # One pair at a time: dense masks are N x H x W floats each.
    out = jax.lax.map(lambda a: fit(*a), (fit_masks, responses, init))
  else:
    out = jax.vmap(fit)(fit_masks, responses, init)
  if not snapshots:
    return out, finite
  history = out[1]
  idd = quantile_idd(classifier, problem, history, chunk_size=chunk_size)
  return jnp.take_along_axis(
      history, jnp.argmax(idd, axis=1)[:, None, None, None], 1)[:, 0], finite


def sloc_xp(classifier: Classifier, x: jax.Array, targets, *, p, key,
            **kwargs) -> jax.Array:
  """SLOC_xp: SLOC with one fixed ``p`` per model (``calibrate_p``)."""
  return sloc(classifier, x, targets, key=key, p=p, **kwargs)


def sloc_m(classifier: Classifier, x: jax.Array, targets, *, key,
           monitor_from: int = 0, **kwargs) -> jax.Array:
  """SLOC_m: SLOC keeping the best insertion-minus-deletion map, scored
  every ``monitor_every`` (15) steps from ``monitor_from`` on and at the
  last step (``quantile_idd``)."""
  return sloc(classifier, x, targets, key=key, monitor_from=monitor_from,
              **kwargs)


def calibrate_p(classifier: Classifier, x: jax.Array, targets, *,
                key: jax.Array, patch_sizes: Sequence[int] | None = None,
                candidates: Sequence[float] = P_CANDIDATES,
                tune_masks: int = 50, baseline=0.0,
                response: str = "prob", chunk_size: int = 64
                ) -> tuple[float, ...]:
  """SLOC_xp's per-model ``p``, one per patch size, from validation images.

  Per-input tuning's criterion averaged over the set: the candidate with the
  largest mean (over images) standard deviation of the responses; ties go
  to the earliest candidate.

  Args:
    x: ``[B, H, W, C]`` validation images; ``targets`` as for ``sloc``.

  Returns:
    One ``p`` per patch size, for ``sloc_xp(..., p=...)``.
  """
  x, t = core.prepare(classifier, x, targets)
  check_tune_masks(tune_masks)
  problem = _make_problem(x, t, baseline, 5.0, response)
  patch_sizes = tuple(patch_sizes or default_patch_sizes(x.shape[1:3]))
  spread = _response_spread(classifier, problem, key,
                            patch_sizes=patch_sizes, candidates=candidates,
                            num_masks=tune_masks, chunk_size=chunk_size)
  best = jnp.argmax(spread.mean(0), -1)
  return tuple(float(candidates[int(i)]) for i in best)
