"""Checkpoint import: readers, torch-free pickles, strict name mapping."""

import collections
import io
import json
import logging
import pathlib
import pickle
import sys
import types
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from lapjax.models import registry, weights
from lapjax.models.card import Layout, ModelCard, Source
from lapjax.models.torch_pickle import UnsafePickleError, load_torch_pickle
from lapjax.models.weights import (
  WeightMismatchError,
  import_weights,
  load_pretrained,
  read_checkpoint,
)

PICKLES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pickles"
LOGGER = "lapjax.models.weights"


class Tiny(nn.Module):
  """conv (bias) -> BatchNorm -> ReLU -> mean -> dense, torch-like names."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, epsilon=1e-5,
                     name="bn")(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


_NAMES = {
    ("params", "conv", "kernel"): "features.conv.weight",
    ("params", "conv", "bias"): "features.conv.bias",
    ("params", "bn", "scale"): "features.bn.weight",
    ("params", "bn", "bias"): "features.bn.bias",
    ("batch_stats", "bn", "mean"): "features.bn.running_mean",
    ("batch_stats", "bn", "var"): "features.bn.running_var",
    ("params", "head", "kernel"): "fc.weight",
    ("params", "head", "bias"): "fc.bias",
}
LAYOUT = Layout("torchlike", lambda path: _NAMES[path])
INPUT = (6, 5, 3)


def _state_dict(num_classes=3, seed=0):
  """A PyTorch-convention state dict of ``Tiny`` (OIHW conv, [out, in] fc)."""
  r = np.random.default_rng(seed)
  f32 = lambda *s: r.normal(size=s).astype(np.float32)
  return {
      "features.conv.weight": f32(4, 3, 3, 3),
      "features.conv.bias": f32(4),
      "features.bn.weight": f32(4) + 1.5,
      "features.bn.bias": f32(4),
      "features.bn.running_mean": f32(4),
      "features.bn.running_var": np.abs(f32(4)) + 0.5,
      "features.bn.num_batches_tracked": np.array(12, np.int64),
      "fc.weight": f32(num_classes, 4),
      "fc.bias": f32(num_classes),
  }


def _torch_forward(sd, x_nchw):
  """The PyTorch computation in plain NumPy (cross-correlation, padding 1)."""
  w, b = sd["features.conv.weight"], sd["features.conv.bias"]
  n, _, h, wd = x_nchw.shape
  xp = np.pad(x_nchw, ((0, 0), (0, 0), (1, 1), (1, 1)))
  y = np.zeros((n, w.shape[0], h, wd), np.float64)
  for i in range(h):
    for j in range(wd):
      patch = xp[:, :, i:i + 3, j:j + 3]
      y[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
  y += b[None, :, None, None]
  mean = sd["features.bn.running_mean"][None, :, None, None]
  var = sd["features.bn.running_var"][None, :, None, None]
  y = (y - mean) / np.sqrt(var + 1e-5)
  y = y * sd["features.bn.weight"][None, :, None, None] + sd[
      "features.bn.bias"][None, :, None, None]
  y = np.maximum(y, 0).mean(axis=(2, 3))
  return y @ sd["fc.weight"].T + sd["fc.bias"]


def _x(seed=1):
  return np.random.default_rng(seed).normal(size=(2, *INPUT)).astype(
      np.float32)


def test_imported_model_computes_the_pytorch_forward_pass():
  sd = _state_dict()
  variables = import_weights(Tiny(), sd, layout=LAYOUT, input_shape=INPUT)
  x = _x()
  got = Tiny().apply(variables, x)
  want = _torch_forward(sd, x.transpose(0, 3, 1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert variables["params"]["conv"]["kernel"].shape == (3, 3, 3, 4)
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"],
                                sd["fc.weight"].T)


def test_convert_rules():
  k4 = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)     # [out, in, h, w]
  np.testing.assert_array_equal(weights.convert(("p", "kernel"), k4),
                                k4.transpose(2, 3, 1, 0))
  k3 = np.arange(24).reshape(2, 3, 4)                    # Conv1d
  assert weights.convert(("p", "kernel"), k3).shape == (4, 3, 2)
  k2 = np.arange(6).reshape(2, 3)
  np.testing.assert_array_equal(weights.convert(("p", "kernel"), k2), k2.T)
  np.testing.assert_array_equal(weights.convert(("p", "scale"), k2), k2)
  np.testing.assert_array_equal(weights.convert(("p", "embedding"), k4), k4)


def test_every_format_gives_the_same_variables(tmp_path):
  sd = _state_dict()
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in
                               sd.items()}, tmp_path / "w.safetensors")
  np.savez(tmp_path / "w.npz", **sd)
  ref = import_weights(Tiny(), sd, layout=LAYOUT, input_shape=INPUT)
  for name in ("w.safetensors", "w.npz"):
    got = import_weights(Tiny(), tmp_path / name, layout=LAYOUT,
                         input_shape=INPUT)
    jax.tree.map(np.testing.assert_array_equal, got, ref)


@pytest.mark.parametrize("name", ["state_dict.pth", "legacy.pth"])
def test_torch_pickles_read_without_torch(name):
  """Files written by torch.save (zip and legacy formats): dtypes, strides,
  storage offsets and shared storages as torch reads them."""
  expected = np.load(PICKLES / "expected.npz")
  sd = load_torch_pickle(PICKLES / name)
  assert list(sd) == list(expected.files)
  for key in expected.files:
    assert sd[key].shape == expected[key].shape, key
    np.testing.assert_array_equal(sd[key].astype(expected[key].dtype),
                                  expected[key], err_msg=key)
  assert sd["half"].dtype == np.float16
  assert sd["bfloat"].dtype == ml_dtypes.bfloat16
  assert sd["long"].dtype == np.int64 and sd["long"][1, 1] == 2**40
  assert sd["mask"].dtype == np.bool_
  assert sd["scalar"].shape == () and sd["scalar"] == 7
  # Each tensor owns its memory: the shared storage is copied out.
  assert sd["shared_a"].base is None or not np.shares_memory(
      sd["shared_a"], sd["shared_b"])


def test_whole_pickled_model_is_refused_with_state_dict_advice():
  with pytest.raises(UnsafePickleError,
                     match=r"torch\.nn\.modules\.container\.Sequential.*"
                           r"model\.state_dict\(\)"):
    read_checkpoint(PICKLES / "whole_module.pth")


def test_malicious_global_is_refused_by_name(capfd):
  with pytest.raises(UnsafePickleError,
                     match=r"refused to load global '(posix|nt|os)\.system'"):
    read_checkpoint(PICKLES / "malicious.pth")
  assert "should-never-run" not in capfd.readouterr().out


def test_nested_checkpoint_is_unwrapped_with_a_note(caplog):
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    sd = read_checkpoint(PICKLES / "nested.pth")
  assert "conv.weight" in sd and "epoch" not in sd
  assert "'state_dict'" in caplog.text and "epoch" in caplog.text


def test_nested_dict_and_data_parallel_prefix(caplog):
  sd = {f"module.{k}": v for k, v in _state_dict().items()}
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    variables = import_weights(Tiny(), {"model": sd, "step": 5},
                               layout=LAYOUT, input_shape=INPUT)
  assert "'model'" in caplog.text and "module." in caplog.text
  np.testing.assert_array_equal(variables["params"]["conv"]["bias"],
                                _state_dict()["features.conv.bias"])


def test_bfloat16_safetensors():
  sd = read_checkpoint(PICKLES / "bf16.safetensors")
  assert sd["w"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(sd["w"].astype(np.float32),
                                np.linspace(-2, 3, 6).reshape(2, 3))
  np.testing.assert_array_equal(sd["b"], np.ones(2, np.float32))


def test_unknown_suffix_and_missing_file(tmp_path):
  (tmp_path / "w.h5").write_bytes(b"\0")
  with pytest.raises(ValueError, match=r"unknown checkpoint format '\.h5'"):
    read_checkpoint(tmp_path / "w.h5")
  with pytest.raises(FileNotFoundError):
    read_checkpoint(tmp_path / "absent.pth")


def test_npz_holding_pickled_objects_is_refused(tmp_path):
  np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
  with pytest.raises(ValueError, match="allow_pickle"):
    read_checkpoint(tmp_path / "obj.npz")


def test_missing_unexpected_and_misshaped_are_listed():
  sd = _state_dict()
  del sd["features.bn.running_var"]
  sd["features.extra.weight"] = np.zeros((7, 2), np.float32)
  sd["features.conv.weight"] = np.zeros((4, 3, 5, 5), np.float32)
  with pytest.raises(WeightMismatchError) as info:
    import_weights(Tiny(), sd, layout=LAYOUT, input_shape=INPUT)
  e = info.value
  assert e.missing == [("batch_stats/bn/var", "features.bn.running_var")]
  assert e.unexpected == ["features.extra.weight"]
  assert e.mismatched == [("params/conv/kernel", "features.conv.weight",
                           "[4, 3, 3, 3]", "[4, 3, 5, 5]")]
  text = str(e)
  assert "1 mis-shaped, 1 missing, 1 unexpected" in text
  assert "features.extra.weight [7, 2]" in text
  # num_batches_tracked matches the layout's ignore pattern: not listed.
  assert "num_batches_tracked" not in text


def test_error_lists_the_first_names_and_counts_the_rest():
  sd = _state_dict()
  for i in range(15):
    sd[f"junk.{i}"] = np.zeros(1, np.float32)
  with pytest.raises(WeightMismatchError, match=r"15 unexpected") as info:
    import_weights(Tiny(), sd, layout=LAYOUT, input_shape=INPUT)
  text = str(info.value)
  assert "junk.0 [1]" in text and "junk.14" not in text
  assert "... and 5 more" in text


def test_wrong_architecture_gets_a_hint():
  sd = {f"layer{i}.weight": np.zeros((2, 2), np.float32) for i in range(9)}
  with pytest.raises(WeightMismatchError, match="another architecture"):
    import_weights(Tiny(), sd, layout=LAYOUT, input_shape=INPUT)


def test_a_key_used_twice_is_an_error():
  names = dict(_NAMES)
  names[("params", "conv", "bias")] = "features.bn.bias"
  sd = _state_dict()
  del sd["features.conv.bias"]
  with pytest.raises(WeightMismatchError, match="used twice") as info:
    import_weights(Tiny(), sd, layout=Layout("dup", names.__getitem__),
                   input_shape=INPUT)
  assert info.value.duplicated == ["features.bn.bias"]


def test_layout_without_a_name_for_a_variable():
  names = {k: v for k, v in _NAMES.items() if k[1] != "head"}
  with pytest.raises(WeightMismatchError, match="has no name") as info:
    import_weights(Tiny(), _state_dict(), layout=Layout("l", names.__getitem__),
                   input_shape=INPUT)
  assert [n for n, _ in info.value.missing] == ["params/head/bias",
                                                "params/head/kernel"]


def test_sources_combine_and_may_share_keys():
  """A fused checkpoint tensor split across variables through ``Source``."""
  names = dict(_NAMES)
  fused = np.random.default_rng(3).normal(size=(4, 2, 4)).astype(np.float32)
  names[("params", "head", "kernel")] = Source(("fused",), lambda t: t[:, 0])
  names[("params", "head", "bias")] = Source(("fused",), lambda t: t[0, 1])
  sd = _state_dict(num_classes=4)
  del sd["fc.weight"], sd["fc.bias"]
  sd["fused"] = fused
  v = import_weights(Tiny(num_classes=4), sd,
                     layout=Layout("fused", names.__getitem__),
                     input_shape=INPUT)
  np.testing.assert_array_equal(v["params"]["head"]["kernel"], fused[:, 0])
  np.testing.assert_array_equal(v["params"]["head"]["bias"], fused[0, 1])


def test_prefix_is_stripped():
  layout = Layout("pre", LAYOUT.key, prefix="backbone.")
  sd = {("backbone." + k if k.startswith("features") else k): v
        for k, v in _state_dict().items()}
  v = import_weights(Tiny(), sd, layout=layout, input_shape=INPUT)
  np.testing.assert_array_equal(v["params"]["bn"]["scale"],
                                _state_dict()["features.bn.weight"])


def test_values_are_cast_to_the_variable_dtype():
  sd = {k: v.astype(np.float16) if v.dtype == np.float32 else v
        for k, v in _state_dict().items()}
  v = import_weights(Tiny(), sd, layout=LAYOUT, input_shape=INPUT)
  assert {a.dtype for a in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}


def test_head_mismatch_is_an_error_with_a_hint_unless_reinitialised(caplog):
  sd = _state_dict(num_classes=5)
  with pytest.raises(WeightMismatchError, match="another number of classes"):
    import_weights(Tiny(num_classes=3), sd, layout=LAYOUT, input_shape=INPUT)
  key = jax.random.key(7)
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    v = import_weights(Tiny(num_classes=3), sd, layout=LAYOUT,
                       input_shape=INPUT, reinit_head=True, key=key)
  fresh = Tiny(num_classes=3).init(key, jnp.zeros((1, *INPUT)))
  np.testing.assert_array_equal(v["params"]["head"]["kernel"],
                                fresh["params"]["head"]["kernel"])
  np.testing.assert_array_equal(v["params"]["conv"]["kernel"],
                                sd["features.conv.weight"].transpose(
                                    2, 3, 1, 0))
  assert "re-initialised the classifier head" in caplog.text
  assert "params/head/kernel [4, 3]" in caplog.text
  assert "checkpoint [5, 4]" in caplog.text


def test_reinit_head_keeps_the_body_strict():
  sd = _state_dict(num_classes=5)
  sd["features.conv.bias"] = np.zeros(6, np.float32)
  with pytest.raises(WeightMismatchError, match="features.conv.bias"):
    import_weights(Tiny(), sd, layout=LAYOUT, input_shape=INPUT,
                   reinit_head=True)


def test_reinit_head_with_the_same_classes_imports_the_head(caplog):
  sd = _state_dict(num_classes=3)
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    v = import_weights(Tiny(), sd, layout=LAYOUT, input_shape=INPUT,
                       reinit_head=True)
  np.testing.assert_array_equal(v["params"]["head"]["bias"], sd["fc.bias"])
  assert "re-initialised" not in caplog.text


# ---------------------------------------------------------- load_pretrained


def _tiny_card(**kwargs):
  other = Layout("other", lambda p: "x." + _NAMES[p])
  return ModelCard(name="tiny_test", build=Tiny, input_size=INPUT[:2],
                   cam_layer="conv", taps=("conv", "bn"),
                   layouts={"other": other, "torchlike": LAYOUT},
                   num_classes=3, **kwargs)


@pytest.fixture
def tiny_card(monkeypatch):
  card = _tiny_card()
  monkeypatch.setitem(registry.CARDS, card.name, card)
  return card


def test_load_pretrained_by_name_chooses_the_layout(tiny_card, tmp_path):
  sd = _state_dict()
  safetensors.numpy.save_file(sd, tmp_path / "w.safetensors")
  module, v = load_pretrained("tiny_test", tmp_path / "w.safetensors")
  assert module.num_classes == 3
  x = _x()
  np.testing.assert_allclose(module.apply(v, x),
                             _torch_forward(sd, x.transpose(0, 3, 1, 2)),
                             rtol=1e-5, atol=1e-5)
  other = {"x." + k: a for k, a in sd.items()}
  _, v2 = load_pretrained("tiny_test", other, layout="other")
  jax.tree.map(np.testing.assert_array_equal, v2, v)
  _, v3 = load_pretrained("tiny_test", other)         # chosen by its names
  jax.tree.map(np.testing.assert_array_equal, v3, v)


def test_load_pretrained_new_classes(tiny_card, caplog):
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    module, v = load_pretrained("tiny_test", _state_dict(), num_classes=2)
  assert module.num_classes == 2
  assert v["params"]["head"]["kernel"].shape == (4, 2)
  assert "re-initialised the classifier head" in caplog.text


def test_load_pretrained_errors(tiny_card):
  with pytest.raises(ValueError, match="needs path=.*downloads nothing"):
    load_pretrained("tiny_test")
  with pytest.raises(ValueError, match="no layout 'timm'"):
    load_pretrained("tiny_test", _state_dict(), layout="timm")
  with pytest.raises(ValueError, match="did you mean 'tiny_test'"):
    load_pretrained("tiny_tset", _state_dict())


def _tiny_from_hf(config, num_classes):
  classes = num_classes or len(config["id2label"])
  return Tiny(num_classes=classes), Layout("hf", LAYOUT.key, prefix="tiny.")


def _write_hf(directory, sd, model_type="tiny"):
  directory.mkdir()
  config = {"model_type": model_type, "image_size": list(INPUT[:2]),
            "id2label": {str(i): f"c{i}" for i in range(3)}}
  (directory / "config.json").write_text(json.dumps(config))
  safetensors.numpy.save_file(
      {("tiny." + k if k.startswith("features") else k): v
       for k, v in sd.items()}, directory / "model.safetensors")


def test_hugging_face_directory(tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(registry.HF_MODEL_TYPES, "tiny", _tiny_from_hf)
  sd = _state_dict()
  _write_hf(tmp_path / "hf", sd)
  module, v = load_pretrained(tmp_path / "hf")
  x = _x()
  np.testing.assert_allclose(module.apply(v, x),
                             _torch_forward(sd, x.transpose(0, 3, 1, 2)),
                             rtol=1e-5, atol=1e-5)
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    module, v = load_pretrained(tmp_path / "hf", num_classes=6)
  assert v["params"]["head"]["bias"].shape == (6,)
  assert "re-initialised" in caplog.text


def test_unsupported_hugging_face_model_type(tmp_path):
  _write_hf(tmp_path / "hf", _state_dict(), model_type="swin")
  with pytest.raises(ValueError, match=r"model_type 'swin'.*supported.*"
                                       r"'vit'"):
    load_pretrained(tmp_path / "hf")


def test_sharded_hugging_face_weights(tmp_path):
  sd = _state_dict()
  keys = sorted(sd)
  (tmp_path / "hf").mkdir()
  weight_map = {}
  for i, part in enumerate((keys[:4], keys[4:])):
    name = f"model-0000{i + 1}-of-00002.safetensors"
    safetensors.numpy.save_file({k: sd[k] for k in part},
                                tmp_path / "hf" / name)
    weight_map.update(dict.fromkeys(part, name))
  (tmp_path / "hf" / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": weight_map}))
  got = read_checkpoint(tmp_path / "hf")
  assert sorted(got) == keys
  for k in keys:
    np.testing.assert_array_equal(got[k], sd[k])


def test_variables_tree_matches_init():
  v = import_weights(Tiny(), _state_dict(), layout=LAYOUT, input_shape=INPUT)
  ref = Tiny().init(jax.random.key(0), jnp.zeros((1, *INPUT)))
  assert (traverse_util.flatten_dict(jax.tree.map(jnp.shape, v))
          == traverse_util.flatten_dict(jax.tree.map(jnp.shape, dict(ref))))


ZOO = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "zoo"


def test_checkpoint_of_another_family_or_size_is_listed():
  """Real torch.save files of the zoo fixtures, loaded as a full ResNet-18."""
  with pytest.raises(WeightMismatchError, match="another architecture") as e:
    load_pretrained("resnet18", ZOO / "vgg16.pth")
  assert "features.0.weight [4, 3, 3, 3]" in str(e.value)
  assert e.value.unexpected and not e.value.mismatched
  with pytest.raises(WeightMismatchError) as e:       # a reduced ResNet
    load_pretrained("resnet18", ZOO / "resnet_basic.pth")
  first = str(e.value).splitlines()[2]
  assert first.startswith("    params/") and "expected [" in first
  assert ("params/stem/conv/kernel", "conv1.weight", "[64, 3, 7, 7]",
          "[8, 3, 7, 7]") in e.value.mismatched


# ------------------------------------------- hand-made torch zip checkpoints


def _fake_torch(monkeypatch):
  """Just enough of a ``torch`` module for ``pickle`` to name its globals."""
  torch_mod = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: lapjax resolves its own stand-in")

  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  storage_type = type("FloatStorage", (), {"__module__": "torch",
                                           "__qualname__": "FloatStorage"})
  torch_mod.FloatStorage, torch_mod._utils = storage_type, utils
  monkeypatch.setitem(sys.modules, "torch", torch_mod)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)
  return _rebuild_tensor_v2, storage_type


def _torch_zip(path, monkeypatch, *, numel, size, stride, offset,
               data=True):
  """A torch zip checkpoint ``{'w': tensor}`` written without torch."""
  rebuild, storage_type = _fake_torch(monkeypatch)

  class Storage:
    pass

  class Tensor:
    def __reduce__(self):
      return (rebuild, (Storage(), offset, size, stride, False,
                        collections.OrderedDict()))

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ("storage", storage_type, "0", "cpu", numel)
      return None

  buf = io.BytesIO()
  Pickler(buf, protocol=2).dump({"w": Tensor()})
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    if data:
      z.writestr("archive/data/0",
                 np.arange(numel, dtype=np.float32).tobytes())
  return path


def test_hand_made_zip_checkpoint_is_read(tmp_path, monkeypatch):
  path = _torch_zip(tmp_path / "w.pth", monkeypatch, numel=10, size=(2, 3),
                    stride=(1, 3), offset=2)
  monkeypatch.undo()
  want = np.lib.stride_tricks.as_strided(
      np.arange(10, dtype=np.float32)[2:], (2, 3), (4, 12))
  np.testing.assert_array_equal(read_checkpoint(path)["w"], want)


@pytest.mark.parametrize("size, stride, offset, data, match", [
    ((3, 3), (3, 1), 0, True, "reads past its storage"),
    ((2, 2), (2, 1), 7, True, "reads past its storage"),
    ((2, 2), (-2, 1), 4, True, "bad tensor geometry"),
    ((2, 2), (2, 1), 0, False, "storage '0' is missing"),
])
def test_malformed_tensors_are_refused(tmp_path, monkeypatch, size, stride,
                                       offset, data, match):
  path = _torch_zip(tmp_path / "w.pth", monkeypatch, numel=8, size=size,
                    stride=stride, offset=offset, data=data)
  monkeypatch.undo()
  with pytest.raises(ValueError, match=match):
    read_checkpoint(path)
