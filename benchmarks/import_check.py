r"""The zoo at full size: parameter counts, and PyTorch's logits after import.

Two halves, because torch and lapjax live in different environments:

1. PyTorch side (any Python with torch, torchvision, timm, safetensors and
   efficientnet-lite-pytorch; see tools/fixtures/common.py)::

     /work/torchvenv/bin/python benchmarks/import_check.py torch \
         --out /tmp/zoo_ref [--models resnet50,vit_base_patch16_224]

   builds each reference model with random weights (BatchNorm statistics
   moved off their defaults by a few train-mode passes), and writes
   ``<name>.safetensors`` (its state dict) and ``<name>.npz`` (one input
   ``[1, H, W, 3]`` NHWC at the card's size and the eval-mode logits).

2. lapjax side::

     .venv/bin/python benchmarks/import_check.py lapjax \
         [--reference /tmp/zoo_ref] [--models ...]

   counts every zoo model's parameters (``jax.eval_shape``: nothing is
   allocated) against the published count, and with ``--reference`` loads
   each checkpoint with ``lapjax.models.load_pretrained`` (strict import,
   layout chosen from the names) and compares the logits: the largest
   absolute difference relative to the largest logit. Prints one JSON line
   per model and a Markdown table for docs/benchmarks.md.

Published counts: torchvision's classification weights table (``num_params``
of each ``*_Weights.DEFAULT``; Inception-V3 without its auxiliary head,
which lapjax does not build: 27,161,264 with it) and timm's model cards for
the ViTs and EfficientNet-Lite0. Each equals ``sum(p.numel() for p in
model.parameters())`` of torchvision 0.29.1 / timm 1.0 models.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# name -> (published parameter count, source, input size)
PUBLISHED = {
    "resnet18": (11_689_512, "torchvision", 224),
    "resnet34": (21_797_672, "torchvision", 224),
    "resnet50": (25_557_032, "torchvision", 224),
    "resnet101": (44_549_160, "torchvision", 224),
    "resnet152": (60_192_808, "torchvision", 224),
    "wide_resnet50_2": (68_883_240, "torchvision", 224),
    "vgg11": (132_863_336, "torchvision", 224),
    "vgg11_bn": (132_868_840, "torchvision", 224),
    "vgg16": (138_357_544, "torchvision", 224),
    "vgg16_bn": (138_365_992, "torchvision", 224),
    "densenet121": (7_978_856, "torchvision", 224),
    "densenet169": (14_149_480, "torchvision", 224),
    "densenet201": (20_013_928, "torchvision", 224),
    "efficientnet_b0": (5_288_548, "torchvision", 224),
    "efficientnet_b1": (7_794_184, "torchvision", 240),
    "efficientnet_b2": (9_109_994, "torchvision", 288),
    "efficientnet_b3": (12_233_232, "torchvision", 300),
    "efficientnet_lite0": (4_652_008, "timm", 224),
    "inception_v3": (23_834_568, "torchvision (no aux head)", 299),
    "convnext_tiny": (28_589_128, "torchvision", 224),
    "convnext_small": (50_223_688, "torchvision", 224),
    "convnext_base": (88_591_464, "torchvision", 224),
    "vit_small_patch16_224": (22_050_664, "timm", 224),
    "vit_base_patch16_224": (86_567_656, "timm", 224),
    "vit_base_patch32_224": (88_224_232, "timm", 224),
    "vit_base_patch8_224": (86_576_872, "timm", 224),
}


def _torch_model(name: str):
  import timm
  import torchvision

  if name.startswith("vit_"):
    return timm.create_model(name)
  if name == "efficientnet_lite0":
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name("efficientnet-lite0")
  if name == "inception_v3":
    # As torchvision's pretrained builder (and lapjax's card) sets it.
    return torchvision.models.inception_v3(init_weights=True,
                                           transform_input=True)
  return getattr(torchvision.models, name)()


def torch_side(out: pathlib.Path, names: list[str]) -> None:
  import numpy as np
  import safetensors.torch
  import torch

  from tools.fixtures.common import randomise_batch_norm

  out.mkdir(parents=True, exist_ok=True)
  for name in names:
    size = PUBLISHED[name][2]
    torch.manual_seed(0)
    model = _torch_model(name)
    randomise_batch_norm(model, (2, 3, size, size), passes=2)
    x = torch.randn(1, 3, size, size,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
      logits = model(x)
    state = {k: v.detach().contiguous() for k, v in
             model.state_dict().items()}
    safetensors.torch.save_file(state, out / f"{name}.safetensors")
    np.savez(out / f"{name}.npz", input=x.numpy().transpose(0, 2, 3, 1),
             logits=logits.numpy())
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"model": name, "torch_params": params}), flush=True)


def lapjax_side(reference: pathlib.Path | None, names: list[str]) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from lapjax.models import get_card, load_pretrained

  rows = []
  for name in names:
    card = get_card(name)
    published, source, _ = PUBLISHED[name]
    module = card.build(num_classes=card.num_classes)
    shapes = jax.eval_shape(module.init, jax.random.key(0),
                            jnp.zeros((1, *card.input_size, 3)))
    params = sum(int(np.prod(p.shape))
                 for p in jax.tree.leaves(shapes["params"]))
    row = {"model": name, "params": params, "published": published,
           "source": source, "params_equal": params == published}
    if reference is not None and (reference / f"{name}.npz").exists():
      ref = np.load(reference / f"{name}.npz")
      module, variables = load_pretrained(
          name, reference / f"{name}.safetensors")
      logits = np.asarray(jax.jit(module.apply)(variables, ref["input"]))
      scale = float(np.abs(ref["logits"]).max())
      row["max_rel_diff"] = float(np.abs(logits - ref["logits"]).max()
                                  / scale)
      row["top1_equal"] = bool((logits.argmax(-1)
                                == ref["logits"].argmax(-1)).all())
    rows.append(row)
    print(json.dumps(row), flush=True)
  print("\n| model | parameters | published (source) | max abs logit diff / "
        "max abs logit |\n|---|---|---|---|")
  for r in rows:
    diff = f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else "-"
    print(f"| {r['model']} | {r['params']:,} | {r['published']:,} "
          f"({r['source']}) | {diff} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("side", choices=["torch", "lapjax"])
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(
      "/tmp/zoo_ref"), help="torch side: where to write the references")
  parser.add_argument("--reference", type=pathlib.Path, default=None,
                      help="lapjax side: the torch side's --out")
  parser.add_argument("--models", default=",".join(PUBLISHED),
                      help="comma-separated names (default: all)")
  args = parser.parse_args()
  names = [n for n in args.models.split(",") if n]
  unknown = [n for n in names if n not in PUBLISHED]
  if unknown:
    raise SystemExit(f"unknown models {unknown}; known: {list(PUBLISHED)}")
  if args.side == "torch":
    torch_side(args.out, names)
  else:
    lapjax_side(args.reference, names)


if __name__ == "__main__":
  main()
