"""The embedded clue benchmark: offline images with known class evidence.

Every image has a smooth random background, low-amplitude pixel noise and
1-3 *distractor* objects (filled discs and rectangles) that every class shares,
so they carry no class information. Clue classes ``1..K`` add 1-3 *clues* of
their class's shape family (ring, plus-cross, triangle, X-cross, square frame,
diamond); class ``0`` is background-only (BGO). Clue size (``min_clue_fraction``
to ``max_clue_fraction`` of the image, as bounding-box area, log-uniform),
aspect, position, colour, count and a shape parameter (ring width, arm width,
orientation) vary per clue; distractors draw size and colour from the same
distributions. Clues are drawn last, fully inside the image, so the exact
clue mask is the union of the rendered clue pixels and the boxes are their
tight boxes (``lapjax.data.boxes`` convention).

Because background and distractors are drawn from a random stream that does
not depend on the class, rendering with ``draw_clues=False`` gives images with
no class information at all (tested: a classifier stays at chance on them).

Two forms: multi-class (``K + 1`` classes, one-vs-others distinguishing clues,
like the LAP paper's 4-class example) and binary (clue present / absent, the
clue family drawn at random per clue, like pneumonia detection). Labels are
``index % num_classes``: every contiguous range of indices is balanced.

Everything is a deterministic function of ``(seed, split, index)``. Run
``python -m lapjax.data.clues --out samples.png`` to see a labelled grid with
the ground-truth outlines.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from lapjax.data import boxes as boxes_lib

SPLITS = {"train": 0, "validation": 1, "test": 2}
CLUE_FAMILIES = ("ring", "cross", "triangle", "xcross", "frame", "diamond")
DISTRACTOR_SHAPES = ("disc", "rectangle")
MIN_CLUE_PIXELS = 5.0   # below this, shape families are not tellable apart
MAX_ASPECT = 1.25       # height / width of an object's box in [1/A, A]

# Layout of the per-image uniform draws (one row of `_NUM_UNIFORMS` floats).
_BG = 7                 # colour 0 (3), colour 1 (3), gradient angle
_OBJ = 9                # kind, y, x, size, aspect, colour (3), shape param
_MAX_OBJECTS = 3        # distractor slots, clue slots


@dataclasses.dataclass(frozen=True)
class CluesConfig:
  """What the clue benchmark renders.

  Attributes:
    image_size: ``(H, W)``.
    num_clue_classes: ``K``, clue shape families used (1..6).
    binary: clue present / absent instead of ``K + 1`` classes.
    min_clue_fraction: smallest clue box area as a fraction of ``H * W``.
    max_clue_fraction: largest clue box area as a fraction of ``H * W``.
    max_clues: clues per clue image, drawn uniformly from ``1..max_clues``.
    max_distractors: distractors per image, uniformly ``1..max_distractors``.
    noise_std: standard deviation of the uniform pixel noise.
    box_padding: 0 for exact boxes; > 0 for coarse annotations: each box grows
      by this fraction of its side on every side and overlapping boxes merge.
  """
  image_size: tuple[int, int] = (64, 64)
  num_clue_classes: int = 3
  binary: bool = False
  min_clue_fraction: float = 0.01
  max_clue_fraction: float = 0.15
  max_clues: int = 3
  max_distractors: int = 3
  noise_std: float = 0.03
  box_padding: float = 0.0

  def __post_init__(self):
    h, w = self.image_size
    if not 1 <= self.num_clue_classes <= len(CLUE_FAMILIES):
      raise ValueError(
          f"num_clue_classes must be in 1..{len(CLUE_FAMILIES)}; got "
          f"{self.num_clue_classes}")
    if not 0 < self.min_clue_fraction <= self.max_clue_fraction < 1:
      raise ValueError(
          "need 0 < min_clue_fraction <= max_clue_fraction < 1; got "
          f"{self.min_clue_fraction}, {self.max_clue_fraction}")
    if not 1 <= self.max_clues <= _MAX_OBJECTS:
      raise ValueError(f"max_clues must be in 1..{_MAX_OBJECTS}; got "
                       f"{self.max_clues}")
    if not 0 <= self.max_distractors <= _MAX_OBJECTS:
      raise ValueError(f"max_distractors must be in 0..{_MAX_OBJECTS}; got "
                       f"{self.max_distractors}")
    smallest = math.sqrt(self.min_clue_fraction * h * w) / math.sqrt(MAX_ASPECT)
    if smallest < MIN_CLUE_PIXELS:
      need = math.ceil(MIN_CLUE_PIXELS * math.sqrt(MAX_ASPECT)
                       / math.sqrt(self.min_clue_fraction))
      raise ValueError(
          f"image_size {tuple(self.image_size)} is too small for "
          f"min_clue_fraction={self.min_clue_fraction}: the smallest clue "
          f"would be {smallest:.1f} px across, and at least "
          f"{MIN_CLUE_PIXELS:.0f} px are needed to tell shapes apart; use an "
          f"image of at least {need}x{need} px or raise min_clue_fraction")
    largest = math.sqrt(self.max_clue_fraction * h * w) * math.sqrt(MAX_ASPECT)
    if largest > min(h, w):
      raise ValueError(
          f"max_clue_fraction={self.max_clue_fraction} gives clues "
          f"{largest:.1f} px across, larger than image_size {(h, w)}")

  @property
  def num_classes(self) -> int:
    return 2 if self.binary else self.num_clue_classes + 1

  @property
  def class_names(self) -> tuple[str, ...]:
    if self.binary:
      return ("no clue", "clue")
    return ("background",) + CLUE_FAMILIES[:self.num_clue_classes]

  @property
  def dc_membership(self) -> np.ndarray:
    """Distinguishing-clue system ``[M, N]``: +1 DC+, -1 DC- of each class.

    Multi-class: one-vs-others, DC ``m`` is the clue family of class
    ``m + 1`` (the BGO class 0 is DC- of every DC). Binary: one DC, the clue.
    """
    n = self.num_classes
    m = np.full((n - 1, n), -1, np.int32)
    m[np.arange(n - 1), np.arange(1, n)] = 1
    return m


def _uniforms(seed: int, split_id: int, indices: np.ndarray,
              count: int, noise_shape: tuple[int, ...]):
  """Per-image random draws, independent of which other images are rendered."""
  u = np.empty((len(indices), count), np.float64)
  noise = np.empty((len(indices),) + noise_shape, np.float32)
  for row, index in enumerate(indices):
    rng = np.random.default_rng((seed, split_id, int(index)))
    u[row] = rng.random(count)
    noise[row] = rng.random(noise_shape, dtype=np.float32)
  return u, noise


def _membership(kind: np.ndarray, u: np.ndarray, v: np.ndarray,
                q: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """Shape masks in normalised object coordinates.

  Args:
    kind: ``[n]`` shape ids: clue families ``0..5``, then disc 6, rectangle 7.
    u, v: ``[n, P, P]`` pixel-centre coordinates, the object box is [-1, 1]^2.
    q: ``[n, 1, 1]`` shape parameter in [0, 1].
    flip: ``[n, 1, 1]`` +1 or -1 (triangle orientation).

  Returns:
    ``[n, P, P]`` bool.
  """
  def ring(u, v, q, f):
    r2 = u * u + v * v
    return (r2 <= 1) & (r2 >= (0.45 + 0.2 * q) ** 2)

  def cross(u, v, q, f):
    au, av, wd = np.abs(u), np.abs(v), 0.22 + 0.13 * q
    return (au <= 1) & (av <= 1) & ((au <= wd) | (av <= wd))

  def triangle(u, v, q, f):
    return (np.abs(v) <= 1) & (np.abs(u) <= (v * f + 1) / 2)

  def xcross(u, v, q, f):
    wd = 1.4 * (0.22 + 0.13 * q)
    return ((np.abs(u) <= 1) & (np.abs(v) <= 1)
            & ((np.abs(u - v) <= wd) | (np.abs(u + v) <= wd)))

  def frame(u, v, q, f):
    cheb = np.maximum(np.abs(u), np.abs(v))
    return (cheb <= 1) & (cheb >= 0.55 + 0.15 * q)

  def diamond(u, v, q, f):
    return np.abs(u) + np.abs(v) <= 1

  def disc(u, v, q, f):
    return u * u + v * v <= 1

  def rectangle(u, v, q, f):
    return (np.abs(u) <= 1) & (np.abs(v) <= 1)

  shapes = (ring, cross, triangle, xcross, frame, diamond, disc, rectangle)
  out = np.zeros(u.shape, bool)
  for k, shape in enumerate(shapes):
    sel = np.flatnonzero(kind == k)
    if sel.size:
      out[sel] = shape(u[sel], v[sel], q[sel], flip[sel])
  return out


def render(config: CluesConfig, split: str, indices: Sequence[int] | np.ndarray,
           *, seed: int = 0, draw_clues: bool = True) -> dict[str, np.ndarray]:
  """Renders clue-benchmark images.

  Args:
    config: what to render.
    split: ``'train'``, ``'validation'`` or ``'test'``.
    indices: ``[B]`` non-negative image indices within the split.
    seed: dataset seed; images are a function of ``(seed, split, index)``.
    draw_clues: False renders the same images with the clues left out (the
      control showing that nothing but the clue carries class information).

  Returns:
    A batch dict: ``image [B, H, W, 3] float32`` in [0, 1], ``label [B]
    int32``, ``mask [B, H, W] bool`` (exact clue pixels), ``boxes [B, 3, 4]
    float32`` ``(y0, x0, y1, x1)``, ``boxes_valid [B, 3] bool``, ``index [B]``.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
  indices = np.asarray(indices, np.int64).reshape(-1)
  if indices.size and indices.min() < 0:
    raise ValueError(f"indices must be >= 0; got min {indices.min()}")
  h, w = config.image_size
  b = len(indices)
  num_draws = _BG + 2 + 2 * _MAX_OBJECTS * _OBJ
  uni, noise = _uniforms(seed, SPLITS[split], indices, num_draws, (h, w, 3))

  labels = (indices % config.num_classes).astype(np.int32)
  has_clue = labels > 0

  # Background: a linear gradient between two colours along a random angle.
  uni32 = uni.astype(np.float32)
  c0, c1 = 0.25 + 0.5 * uni32[:, 0:3], 0.25 + 0.5 * uni32[:, 3:6]
  theta = 2 * np.pi * uni32[:, 6]
  yy = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
  xx = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
  t = (np.cos(theta)[:, None, None] * yy[None, :, None]
       + np.sin(theta)[:, None, None] * xx[None, None, :]) + 0.5
  image = c0[:, None, None, :] + (c1 - c0)[:, None, None, :] * t[..., None]
  bg_mean = (c0 + c1) / 2                                    # [B, 3]

  n_distractors = 1 + np.floor(uni[:, _BG] * config.max_distractors)
  n_distractors = np.where(config.max_distractors == 0, 0, n_distractors)
  n_clues = np.where(has_clue, 1 + np.floor(uni[:, _BG + 1] * config.max_clues),
                     0)

  side_lo = math.sqrt(config.min_clue_fraction * h * w)
  side_hi = math.sqrt(config.max_clue_fraction * h * w)
  patch = int(math.ceil(side_hi * math.sqrt(MAX_ASPECT))) + 3
  clue_mask = np.zeros((b, h, w), bool)
  boxes = np.zeros((b, _MAX_OBJECTS, 4), np.float32)
  boxes_valid = np.zeros((b, _MAX_OBJECTS), bool)
  grid = np.arange(patch, dtype=np.float32) + 0.5

  for slot in range(2 * _MAX_OBJECTS):
    is_clue = slot >= _MAX_OBJECTS
    k = slot - _MAX_OBJECTS if is_clue else slot
    active = k < (n_clues if is_clue else n_distractors)
    if is_clue and not draw_clues:
      continue
    rows = np.flatnonzero(active)
    if rows.size == 0:
      continue
    p = uni[rows, _BG + 2 + slot * _OBJ:_BG + 2 + (slot + 1) * _OBJ]
    if is_clue:
      family = (labels[rows] - 1 if not config.binary else
                np.floor(p[:, 0] * config.num_clue_classes).astype(np.int64))
      kind = family
    else:
      kind = 6 + np.floor(p[:, 0] * 2).astype(np.int64)
    side = side_lo * np.exp(p[:, 3] * np.log(side_hi / side_lo))
    aspect = np.exp((2 * p[:, 4] - 1) * np.log(MAX_ASPECT))
    half_h, half_w = side * np.sqrt(aspect) / 2, side / np.sqrt(aspect) / 2
    cy = half_h + p[:, 1] * (h - 2 * half_h)
    cx = half_w + p[:, 2] * (w - 2 * half_w)
    # Colour: clearly off the background, in a random direction per channel.
    sign = np.where(bg_mean[rows].mean(-1, keepdims=True) < 0.5, 1.0, -1.0)
    colour = np.clip(bg_mean[rows] + sign * (0.2 + 0.35 * p[:, 5:8]), 0, 1)
    colour = colour.astype(np.float32)
    q = p[:, 8]
    flip = np.where(p[:, 8] < 0.5, -1.0, 1.0)   # triangles: q picks direction
    oy = np.floor(cy).astype(np.int64) - patch // 2
    ox = np.floor(cx).astype(np.int64) - patch // 2
    v = (oy[:, None, None] + grid[None, :, None] - cy[:, None, None]) / (
        half_h[:, None, None])
    u = (ox[:, None, None] + grid[None, None, :] - cx[:, None, None]) / (
        half_w[:, None, None])
    u, v = np.broadcast_arrays(u.astype(np.float32), v.astype(np.float32))
    member = _membership(kind, u, v, q[:, None, None], flip[:, None, None])
    # Objects lie inside the image, so every member pixel is an image pixel.
    obj, pi, pj = np.nonzero(member)
    bi, ri, ci = rows[obj], oy[obj] + pi, ox[obj] + pj
    image[bi, ri, ci] = colour[obj]
    if is_clue:
      clue_mask[bi, ri, ci] = True
      patch_box = boxes_lib.mask_to_box(member)
      boxes[rows, k] = patch_box + np.stack([oy, ox, oy, ox], -1)
      boxes_valid[rows, k] = True

  image += config.noise_std * math.sqrt(12) * (noise - 0.5)
  np.clip(image, 0, 1, out=image)
  if config.box_padding > 0:
    boxes, boxes_valid = boxes_lib.coarsen_boxes(
        boxes, boxes_valid, h, w, padding=config.box_padding)
  return {
      "image": image,
      "label": labels,
      "mask": clue_mask,
      "boxes": boxes,
      "boxes_valid": boxes_valid,
      "index": indices,
  }


def _main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description="Draw a labelled grid of clue-benchmark samples.")
  parser.add_argument("--out", default="samples.png", help="PNG to write")
  parser.add_argument("--num", type=int, default=16, help="images to draw")
  parser.add_argument("--split", default="train", choices=sorted(SPLITS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--size", type=int, nargs=2, default=(64, 64),
                      metavar=("H", "W"))
  parser.add_argument("--binary", action="store_true")
  parser.add_argument("--box_padding", type=float, default=0.0)
  args = parser.parse_args(argv)
  from lapjax import viz  # matplotlib only when drawing
  config = CluesConfig(image_size=tuple(args.size), binary=args.binary,
                       box_padding=args.box_padding)
  batch = render(config, args.split, np.arange(args.num), seed=args.seed)
  titles = [config.class_names[y] for y in batch["label"]]
  viz.sample_grid(batch, titles, args.out)
  print(f"wrote {args.out}: {args.num} {args.split} images, seed {args.seed}")


if __name__ == "__main__":
  _main()
