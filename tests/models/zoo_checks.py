"""Checks shared by the zoo family tests: PyTorch fixtures, properties,
attribution methods on reduced-size models.

The fixtures under ``tests/fixtures/zoo`` were written by
``tools/fixtures/make_<family>.py`` with the real torchvision / Hugging Face
classes; these checks read them with lapjax alone.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lapjax import attribution as attr
from lapjax import from_flax
from lapjax.models import weights
from lapjax.models.card import Layout, Source

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "zoo"


def load_fixture(name: str) -> dict[str, np.ndarray]:
  with np.load(FIXTURES / f"{name}.npz") as f:
    return dict(f)


def state_dict_names(family: str) -> dict[str, dict[str, tuple[int, ...]]]:
  """``{model: {key: shape}}`` of the full-size PyTorch models."""
  with gzip.open(FIXTURES / f"{family}_names.json.gz", "rt") as f:
    return {m: {k: tuple(s) for k, s in names.items()}
            for m, names in json.load(f).items()}


def assert_layout_covers(module, layout: Layout,
                         names: dict[str, tuple[int, ...]]) -> None:
  """Every variable of the full-size ``module`` has its own checkpoint key
  of the right shape (after ``weights.convert``), and every key but the
  layout's ignored ones is used: what ``import_weights`` demands of a real
  checkpoint, checked without weights."""
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jnp.zeros((1, 224, 224, 3)))
  used: dict[str, str] = {}
  for path, spec in traverse_util.flatten_dict(dict(shapes)).items():
    key = layout.key(path)
    if isinstance(key, Source):       # e.g. a reshaped or split tensor
      for k in key.keys:
        assert k in names, f"{'/'.join(path)}: {k!r} not in the checkpoint"
        used[k] = "/".join(path)
      views = [np.zeros(names[k], np.float32) for k in key.keys]
      assert key.combine(*views).shape == spec.shape, (path, key.keys)
      continue
    assert key in names, f"{'/'.join(path)}: {key!r} not in the checkpoint"
    assert key not in used, f"{key!r} used by {used[key]} and {path}"
    used[key] = "/".join(path)
    view = np.broadcast_to(np.float32(0), names[key])
    assert weights.convert(path, view).shape == spec.shape, (path, key)
  ignored = [re.compile(p) for p in layout.ignore]
  unused = [k for k in names if k not in used
            and not any(p.search(k) for p in ignored)]
  assert not unused, f"checkpoint keys no variable uses: {unused[:5]}"


def assert_matches_fixture(module, variables, name: str) -> None:
  """Logits equal PyTorch's to 1e-5 and every recorded stage to 1e-4, both
  relative to the largest magnitude of the tensor."""
  fixture = load_fixture(name)
  stages = sorted(k.removeprefix("stage:") for k in fixture
                  if k.startswith("stage:"))
  assert stages, f"{name} records no stages"
  clf = from_flax(module, variables, layers=stages)
  logits, feats = clf.apply(jnp.asarray(fixture["input"]))
  want = fixture["logits"]
  np.testing.assert_allclose(logits, want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())
  for stage in stages:
    want = fixture[f"stage:{stage}"]
    np.testing.assert_allclose(feats[stage], want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max(),
                               err_msg=f"stage {stage}")


def assert_jit_and_batch_properties(module, variables, x: jax.Array) -> None:
  """``jit`` equals eager, and each image's logits do not depend on the
  other images of the batch (BatchNorm in inference mode)."""
  apply = jax.jit(module.apply)
  eager = module.apply(variables, x)
  jitted = apply(variables, x)
  scale = float(jnp.abs(eager).max())
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6 * scale)
  for i in range(x.shape[0]):
    single = apply(variables, x[i:i + 1])
    np.testing.assert_allclose(single[0], jitted[i], rtol=1e-5,
                               atol=1e-6 * scale)
  other = x.at[1:].set(jax.random.normal(jax.random.key(7), x[1:].shape))
  np.testing.assert_allclose(apply(variables, other)[0], jitted[0],
                             rtol=1e-5, atol=1e-6 * scale)


ATTRIBUTION_METHODS = ("gradient", "grad_cam", "integrated_gradients",
                       "occlusion")


def run_attribution(method: str, module, variables, x: jax.Array,
                    cam_layer: str) -> jax.Array:
  """One attribution method with few steps/windows, for the top class."""
  clf = from_flax(module, variables, layers=[cam_layer])
  targets = jnp.argmax(clf.apply(x)[0], axis=-1)
  if method == "gradient":
    return attr.gradient(clf, x, targets)
  if method == "grad_cam":
    return attr.grad_cam(clf, x, targets, layer=cam_layer)
  if method == "integrated_gradients":
    return attr.integrated_gradients(clf, x, targets, steps=4)
  if method == "occlusion":
    return attr.occlusion(clf, x, targets, window=(16, 16), stride=(16, 16))
  raise ValueError(method)


def assert_finite_maps(method: str, maps: jax.Array,
                       shape: Sequence[int]) -> None:
  """``[B, H, W]`` finite maps; non-zero except Grad-CAM's (its ReLU may
  zero a random model's map)."""
  assert maps.shape == tuple(shape)
  assert np.all(np.isfinite(np.asarray(maps)))
  if method != "grad_cam":
    assert np.all(np.abs(np.asarray(maps)).max(axis=(1, 2)) > 0)
