"""SLOC's fitting step in plain NumPy (float64), written from
REFERENCE-NOTES.md independently of lapjax: dense masks, the loss gradient
derived by hand, and Adam spelled out."""

import numpy as np


def loss_gradient(a, masks, responses, weights=(1.0, 0.1, 0.01)):
  """Gradient of the SLOC loss w.r.t. ``a [H, W]``; masks ``[N, H, W]``."""
  n, h, w = masks.shape
  sizes = masks.reshape(n, -1).sum(1)
  gap = np.einsum("nhw,hw->n", masks, a) - responses
  # d/da mean_m gap^2 / (2 |m| H W)
  g = weights[0] * np.einsum("n,nhw->hw", gap / (sizes * h * w), masks) / n
  dx = a[:, :-1] - a[:, 1:]                  # mean over H x (W - 1)
  gx = np.zeros_like(a)
  gx[:, :-1] += 2 * dx / dx.size
  gx[:, 1:] -= 2 * dx / dx.size
  dy = a[:-1] - a[1:]                        # mean over (H - 1) x W
  gy = np.zeros_like(a)
  gy[:-1] += 2 * dy / dy.size
  gy[1:] -= 2 * dy / dy.size
  return g + weights[1] * (gx + gy) + weights[2] * np.sign(a) / a.size


def fit(masks, responses, init, *, steps=501, lr=0.1, decay=None,
        b1=0.9, b2=0.999, eps=1e-8):
  """Adam on the SLOC loss; ``decay=(every, factor)`` is a step decay."""
  masks = np.asarray(masks, np.float64)
  a = np.asarray(init, np.float64).copy()
  m = np.zeros_like(a)
  v = np.zeros_like(a)
  for t in range(1, steps + 1):
    rate = lr if decay is None else lr * decay[1] ** ((t - 1) // decay[0])
    g = loss_gradient(a, masks, np.asarray(responses, np.float64))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    a -= rate * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  return a
