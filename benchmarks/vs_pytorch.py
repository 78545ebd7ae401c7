r"""lapjax against PyTorch, side by side, on the same model with the same
weights.

  python benchmarks/vs_pytorch.py [--model resnet50|cnn] [--reps 3] \
      [--torch-python /work/torchvenv/bin/python] [--methods a,b,...] \
      [--batch N] [--row-by-row]

Two worker processes, one per framework, each holding its model and its
compiled functions; the driver (this script, in lapjax's environment)
times one call of one method in one worker at a time, alternating
frameworks and methods in interleaved rounds (a warm-up round first:
compilation, graph capture and hook set-up are excluded), so that a slow
spell of the machine hits both sides alike. Only ratios within one run
mean anything on a shared machine. Each call is timed in wall time and in
CPU time (``time.process_time`` of the worker, all its threads: the work
done, far less sensitive to a loaded machine). The PyTorch worker runs
with ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait-policy``): on a shared
machine OpenMP's spinning threads made PyTorch 10-40x slower.
``--xla-flags`` adds lapjax workers with other ``XLA_FLAGS``, and
``--lapjax-tree`` workers that import lapjax from another source tree (a
before/after comparison: ``git archive <commit> lapjax | tar -x -C DIR``),
timed in the same rounds. ``--torch-python none``: lapjax alone (random
weights) with its floors; ``--device cuda``: PyTorch on the GPU (lapjax
uses JAX's default backend). ``--batch`` overrides the model's batch size.
Prints one JSON line per method and a Markdown table, and each timed call
to stderr as it comes (``vs_pytorch_call``: progress on a slow machine).
Each row also has each side's warm-up call (``<side>_first_call_s``:
compilation, graph capture and hooks, plus one call). ``--row-by-row``
times one method at a time (with its floors; the sides still alternate
within each round) and prints its row as soon as its rounds end, in
``--methods`` order: a run stopped early, e.g. on a cold GPU where
compiling the ResNet-50 programs takes most of a time share, keeps the
rows it finished (default: every method in every round, rows at the end).

Models:

* ``resnet50``: torchvision's ResNet-50 (random weights, BatchNorm
  statistics moved off their defaults by two train-mode passes), saved as
  safetensors by the torch worker and loaded by the lapjax worker with
  ``lapjax.models.load_pretrained('resnet50', path)``; 224x224, batch 4,
  CAM layer ``layer4`` / ``stage4``. Each bottleneck gets its own ReLU
  modules (no parameters: the state dict is torchvision's) and every ReLU
  is out of place, which Captum's DeepLift needs.
* ``cnn``: the default SmallCNN (widths 16-128, 4 classes), 64x64, batch
  4, CAM layer ``block4``, and its PyTorch twin built in the torch worker
  (same layers, PyTorch's padding 1 for Flax's ``'SAME'`` 3x3); the
  weights travel as an ``.npz`` of the torch state dict.

The two sides' logits on the benchmark's input are compared first
(``logit_max_abs_diff``): the same architecture with the same weights.

Methods, as a user calls them (lapjax: the public method called eagerly,
which runs one compiled program; PyTorch: Captum 0.9, pytorch-grad-cam
1.5.7, zennit 0.5.1, with the same number of images per pass ``--pass``
where the library has such an option):

=================  ================================  ========================
row                PyTorch                           lapjax
=================  ================================  ========================
forward            ``model(x)`` under ``no_grad``    ``jax.jit(module.apply)``
gradient           Captum ``Saliency``               ``gradient``
Grad-CAM           Captum ``LayerGradCam`` +         ``grad_cam``
                   ``interpolate``; pytorch-grad-cam
                   ``GradCAM`` (two rows)
IG, 16 steps       Captum ``IntegratedGradients``    ``integrated_gradients``
                   (Riemann trapezoid)
SmoothGrad, 16     Captum ``NoiseTunnel(Saliency)``  ``smoothgrad``
occlusion          Captum ``Occlusion``, 32x32       ``occlusion``
                   windows, stride 32 (49 windows at
                   224; 8x8 / stride 8 at 64)
Score-CAM          pytorch-grad-cam ``ScoreCAM``     ``score_cam``
                   (CNN only: ResNet-50's 2048
                   channels are 8192 passes)
RISE               a plain PyTorch implementation    ``rise``
                   (neither library has RISE)
LRP                zennit ``EpsilonPlusFlat``        ``lrp`` (``relevance_
                   (``ResNetCanonizer`` /            classifier``)
                   ``SequentialMergeBatchNorm``)
DeepLIFT           Captum ``DeepLift``               ``deeplift``
=================  ================================  ========================

Each lapjax row also has its floor: the passes the method must run, timed
as plain jitted functions in the same rounds (a forward or an input
gradient of the batch, or of ``--pass`` images scaled by the number of
images the method runs through the model; a forward and a gradient for
DeepLIFT, whose baseline needs its own forward pass, and for LRP, whose z⁺
rule runs every convolution once more with ``W^+`` before its transposed
pass), and ``floor_ratio = lapjax / floor``.

PyTorch side: any Python with torch, torchvision, captum, zennit and
grad-cam (``pytorch-grad-cam``) and safetensors; here
``/work/torchvenv`` (torch 2.14.1 CPU, torchvision 0.29.1, captum 0.9.0,
zennit 0.5.1, grad-cam 1.5.7). The issue's first table used torch 2.13.0
CPU, which installs here from local files::

  python3 -m venv /work/torch213
  /work/torch213/bin/pip install torch==2.13.0 captum

(add torchvision, zennit, grad-cam and safetensors for every row; rows
whose library is missing are reported as such, not failed). Not part of
CI: tests never import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PYTHON = os.environ.get("LAPJAX_TORCH_PYTHON",
                              "/work/torchvenv/bin/python")
TREE_ENV = "VS_PYTORCH_LAPJAX_TREE"  # where a lapjax worker imports from

# model -> image size, classes, batch, images per pass, CAM layer (lapjax),
# occlusion window, RISE masks.
SETTINGS = {
    "resnet50": {"size": 224, "classes": 1000, "batch": 4, "pass": 16,
                 "layer": "stage4", "window": 32, "masks": 32},
    "cnn": {"size": 64, "classes": 4, "batch": 4, "pass": 64,
            "layer": "block4", "window": 8, "masks": 256},
}
METHODS = ("forward", "gradient", "grad_cam", "grad_cam_pgc",
           "integrated_gradients", "smoothgrad", "occlusion", "score_cam",
           "rise", "lrp", "deeplift")
STEPS = 16  # integrated gradients' steps and SmoothGrad's samples


def _images_through_model(name: str, s: dict) -> tuple[str, float]:
  """What each method must run: ``(unit, images)`` where unit ``fwd`` /
  ``grad`` is a forward / an input-gradient pass of ``images`` images."""
  b = s["batch"]
  windows = (s["size"] // s["window"]) ** 2
  return {
      "forward": ("fwd", b),
      "gradient": ("grad", b),
      "grad_cam": ("fwd", b),
      "grad_cam_pgc": ("fwd", b),
      "integrated_gradients": ("grad", STEPS * b),
      "smoothgrad": ("grad", STEPS * b),
      "occlusion": ("fwd", (windows + 1) * b),
      "score_cam": ("fwd", (128 + 1) * b),
      "rise": ("fwd", s["masks"] * b),
      "lrp": ("grad", b),
      "deeplift": ("grad", b),
  }[name]


# --------------------------------------------------------------------------
# Worker plumbing: JSON commands on stdin, JSON replies on stdout prefixed
# with a marker (libraries may print too).

MARK = "@@vs_pytorch "


def _serve(handlers: dict) -> None:
  for line in sys.stdin:
    cmd = json.loads(line)
    try:
      reply = handlers[cmd["cmd"]](**cmd.get("args", {}))
    except Exception as e:  # reported to the driver, which decides
      reply = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(MARK + json.dumps(reply) + "\n")
    sys.stdout.flush()


class Worker:
  """One framework's process."""

  def __init__(self, python: str, role: str, log: str,
               env: dict | None = None):
    self.log = open(log, "w")
    env = {**os.environ, **(env or {})}
    self.proc = subprocess.Popen(
        [python, os.path.abspath(__file__), "--worker", role],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
        text=True, cwd=ROOT, env=env)

  def call(self, cmd: str, **args) -> dict:
    self.proc.stdin.write(json.dumps({"cmd": cmd, "args": args}) + "\n")
    self.proc.stdin.flush()
    for line in self.proc.stdout:
      if line.startswith(MARK):
        return json.loads(line[len(MARK):])
    raise RuntimeError(f"worker exited; see {self.log.name}")

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()
    self.log.close()


def _timer(fns: dict, sync) -> dict:
  """The ``time`` handler: one call of ``fns[name]``, in seconds."""
  def time_one(name: str) -> dict:
    if name not in fns:
      return {"missing": True}
    t, c = time.perf_counter(), time.process_time()
    sync(fns[name]())
    return {"seconds": time.perf_counter() - t,
            "cpu_seconds": time.process_time() - c}
  return time_one


# --------------------------------------------------------------------------
# PyTorch worker.

def _torch_worker() -> None:
  import warnings

  import numpy as np
  import torch

  warnings.filterwarnings("ignore")
  state = {}

  def setup(model: str, directory: str, device: str, batch: int) -> dict:
    s = {**SETTINGS[model], "batch": batch}
    torch.manual_seed(0)
    net, layer, cam_layer = (_torch_resnet50() if model == "resnet50"
                             else _torch_cnn())
    net.train()
    with torch.no_grad():
      for _ in range(2):
        net(torch.randn(2, 3, s["size"], s["size"]))
    net.eval()
    x = torch.randn(s["batch"], 3, s["size"], s["size"],
                    generator=torch.Generator().manual_seed(1))
    t = torch.arange(s["batch"]) % s["classes"]
    with torch.no_grad():
      logits = net(x)
    sd = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    if model == "resnet50":
      import safetensors.torch
      safetensors.torch.save_file(sd, os.path.join(directory,
                                                   "weights.safetensors"))
    else:
      np.savez(os.path.join(directory, "weights.npz"),
               **{k: v.numpy() for k, v in sd.items()})
    np.savez(os.path.join(directory, "input.npz"),
             x=x.numpy().transpose(0, 2, 3, 1), t=t.numpy(),
             logits=logits.numpy())
    net, x, t = net.to(device), x.to(device), t.to(device)
    fns = _torch_methods(net, layer, cam_layer, x, t, s, model)
    sync = (torch.cuda.synchronize if device.startswith("cuda")
            else lambda: None)
    state["time"] = _timer(fns, lambda out: sync())
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "methods": sorted(fns)}

  _serve({"setup": setup, "time": lambda name: state["time"](name)})


def _torch_resnet50():
  import torch
  import torchvision

  class Bottleneck(torchvision.models.resnet.Bottleneck):
    """torchvision's block with one ReLU module per use (DeepLift)."""

    def forward(self, x):
      y = self.relu1(self.bn1(self.conv1(x)))
      y = self.relu2(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      shortcut = x if self.downsample is None else self.downsample(x)
      return self.relu3(y + shortcut)

  net = torchvision.models.resnet50()
  for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
    for block in stage:
      block.__class__ = Bottleneck
      for i in (1, 2, 3):
        setattr(block, f"relu{i}", torch.nn.ReLU())
  for m in net.modules():
    if isinstance(m, torch.nn.ReLU):
      m.inplace = False
  return net, net.layer4, net.layer4[-1]


def _torch_cnn():
  from torch import nn

  class TorchCNN(nn.Module):
    """The default SmallCNN's twin: conv-BN-ReLU blocks, 2x2 max pools."""

    def __init__(self, widths=(16, 32, 64, 128), classes=4):
      super().__init__()
      chans = (3, *widths)
      self.blocks = nn.ModuleList(
          nn.Sequential(nn.Conv2d(chans[i], w, 3, padding=1, bias=False),
                        nn.BatchNorm2d(w), nn.ReLU())
          for i, w in enumerate(widths))
      self.pools = nn.ModuleList(nn.MaxPool2d(2) for _ in widths[1:])
      self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
      for i, block in enumerate(self.blocks):
        x = block(x)
        if i < len(self.pools):
          x = self.pools[i](x)
      return self.fc(x.mean((2, 3)))

  net = TorchCNN()
  return net, net.blocks[-1], net.blocks[-1]


def _torch_methods(net, layer, cam_layer, x, t, s, model) -> dict:
  """Each row's PyTorch call; rows whose library is missing are left out."""
  import torch

  b, p, size = s["batch"], s["pass"], s["size"]
  targets = [int(i) for i in t]
  fns = {}

  def forward():
    with torch.no_grad():
      return net(x)

  fns["forward"] = forward
  try:
    from captum import attr as ca
  except ImportError:
    ca = None
  if ca is not None:
    w = s["window"]
    sigma = 0.15 * float(x.max() - x.min())
    fns["gradient"] = lambda: ca.Saliency(net).attribute(x, target=t,
                                                         abs=False)
    fns["grad_cam"] = lambda: ca.LayerAttribution.interpolate(
        ca.LayerGradCam(net, layer).attribute(x, target=t),
        (size, size), "bilinear")
    fns["integrated_gradients"] = lambda: ca.IntegratedGradients(
        net).attribute(x, target=t, n_steps=STEPS,
                       method="riemann_trapezoid", internal_batch_size=p)
    fns["smoothgrad"] = lambda: ca.NoiseTunnel(ca.Saliency(net)).attribute(
        x, nt_type="smoothgrad", nt_samples=STEPS,
        nt_samples_batch_size=max(1, p // b), stdevs=sigma, target=t,
        abs=False)
    fns["occlusion"] = lambda: ca.Occlusion(net).attribute(
        x, sliding_window_shapes=(3, w, w), strides=(3, w, w), target=t,
        baselines=0.0, perturbations_per_eval=max(1, p // b))
    fns["deeplift"] = lambda: ca.DeepLift(net).attribute(
        x, target=t, baselines=0.0)
  try:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
  except ImportError:
    pgc = None
  if pgc is not None:
    cam_targets = [ClassifierOutputTarget(i) for i in targets]

    def grad_cam_pgc():
      with pgc.GradCAM(model=net, target_layers=[cam_layer]) as cam:
        return cam(input_tensor=x, targets=cam_targets)

    def score_cam():
      with pgc.ScoreCAM(model=net, target_layers=[cam_layer]) as cam:
        cam.batch_size = p
        return cam(input_tensor=x, targets=cam_targets)

    fns["grad_cam_pgc"] = grad_cam_pgc
    if model == "cnn":
      fns["score_cam"] = score_cam
  try:
    import zennit.attribution
    import zennit.composites
    import zennit.torchvision
    from zennit.canonizers import SequentialMergeBatchNorm
  except ImportError:
    zennit = None
  if zennit is not None:
    canonizer = (zennit.torchvision.ResNetCanonizer if model == "resnet50"
                 else SequentialMergeBatchNorm)
    one_hot = torch.nn.functional.one_hot(t, s["classes"]).float()

    def lrp():
      composite = zennit.composites.EpsilonPlusFlat(canonizers=[canonizer()])
      with zennit.attribution.Gradient(net, composite) as attributor:
        return attributor(x, one_hot)[1]

    fns["lrp"] = lrp
  fns["rise"] = lambda: _torch_rise(net, x, t, s)
  return fns


def _torch_rise(net, x, t, s):
  """RISE (Petsiuk et al. 2018) in plain PyTorch: ``masks`` random 7x7
  grids, bilinearly upsampled with a random shift; softmax score of the
  target class; passes of ``s['pass']`` masked images."""
  import torch

  n, size, cells, p = s["masks"], s["size"], 7, 0.5
  gen = torch.Generator().manual_seed(0)
  cell = -(-size // cells)
  grid = (torch.rand(n, 1, cells, cells, generator=gen) < p).float()
  up = torch.nn.functional.interpolate(grid, size=((cells + 1) * cell,) * 2,
                                       mode="bilinear", align_corners=False)
  shifts = torch.randint(0, cell, (n, 2), generator=gen)
  masks = torch.stack([up[i, :, dy:dy + size, dx:dx + size]
                       for i, (dy, dx) in enumerate(shifts.tolist())])
  per_pass = max(1, s["pass"] // x.shape[0])
  masks = masks.to(x.device)
  sal = torch.zeros(x.shape[0], size, size, device=x.device)
  with torch.no_grad():
    for i in range(0, n, per_pass):
      m = masks[i:i + per_pass]                        # [m, 1, H, W]
      batch = (x[None] * m[:, None]).flatten(0, 1)     # [m * B, C, H, W]
      probs = net(batch).softmax(-1).view(len(m), x.shape[0], -1)
      score = probs[:, torch.arange(len(t), device=x.device), t]  # [m, B]
      sal += torch.einsum("mb,mhw->bhw", score, m[:, 0])
  return sal / (n * p)


# --------------------------------------------------------------------------
# lapjax worker.

def _lapjax_worker() -> None:
  sys.path.insert(0, os.environ.get(TREE_ENV, ROOT))
  state = {}

  def setup(model: str, directory: str, batch: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lapjax import attribution as attr
    from lapjax import from_flax

    s = {**SETTINGS[model], "batch": batch}
    data = np.load(os.path.join(directory, "input.npz"))
    module, variables = _lapjax_model(model, directory)
    x, t = jnp.asarray(data["x"]), jnp.asarray(data["t"])
    logits = np.asarray(jax.jit(module.apply)(variables, x))
    reference = data["logits"] if "logits" in data else None
    diff = (None if reference is None
            else float(np.abs(logits - reference).max()))
    clf = from_flax(module, variables, layers=[s["layer"]])
    rclf = attr.relevance_classifier(module, variables)
    key, layer, p, w = jax.random.key(0), s["layer"], s["pass"], s["window"]
    apply = jax.jit(module.apply)

    def plain_grad(xs, ts):
      def score(xs):
        return jnp.take_along_axis(module.apply(variables, xs), ts[:, None],
                                   axis=1).sum()
      return jax.grad(score)(xs)

    grad_jit = jax.jit(plain_grad)
    xp = jnp.resize(x, (p, *x.shape[1:]))
    tp = jnp.resize(t, (p,))
    fns = {
        "forward": lambda: apply(variables, x),
        "gradient": lambda: attr.gradient(clf, x, t),
        "grad_cam": lambda: attr.grad_cam(clf, x, t, layer=layer),
        # The same lapjax call, against pytorch-grad-cam's GradCAM.
        "grad_cam_pgc": lambda: attr.grad_cam(clf, x, t, layer=layer),
        "integrated_gradients": lambda: attr.integrated_gradients(
            clf, x, t, steps=STEPS, chunk_size=p),
        "smoothgrad": lambda: attr.smoothgrad(clf, x, t, key=key,
                                              samples=STEPS, chunk_size=p),
        "occlusion": lambda: attr.occlusion(clf, x, t, window=(w, w),
                                            stride=(w, w), chunk_size=p),
        "rise": lambda: attr.rise(clf, x, t, key=key, num_masks=s["masks"],
                                  chunk_size=p),
        "lrp": lambda: attr.lrp(rclf, x, t, composite="epsilon_plus_flat"),
        "deeplift": lambda: attr.deeplift(rclf, x, t),
        # Floors: plain jitted passes.
        "floor_fwd_batch": lambda: apply(variables, x),
        "floor_grad_batch": lambda: grad_jit(x, t),
        "floor_fwd_pass": lambda: apply(variables, xp),
        "floor_grad_pass": lambda: grad_jit(xp, tp),
    }
    if model == "cnn":
      fns["score_cam"] = lambda: attr.score_cam(clf, x, t, layer=layer,
                                                chunk_size=p)
    state["time"] = _timer(fns, jax.block_until_ready)
    return {"jax": jax.__version__, "lapjax_from": os.path.dirname(
                os.path.dirname(attr.__file__)),
            "logit_max_abs_diff": diff,
            "logit_max_abs": float(np.abs(logits).max()),
            "same_top1": (None if reference is None else bool(
                (logits.argmax(-1) == reference.argmax(-1)).all())),
            "devices": [str(d) for d in jax.devices()]}

  _serve({"setup": setup, "time": lambda name: state["time"](name)})


def _lapjax_model(model: str, directory: str):
  import jax
  import numpy as np

  from lapjax.models import SmallCNN, create_model, load_pretrained

  if not any(f.startswith("weights.") for f in os.listdir(directory)):
    # No PyTorch side: random weights of the same model.
    module = (create_model("resnet50", num_classes=1000) if model == "resnet50"
              else SmallCNN(4, widths=(16, 32, 64, 128)))
    size = SETTINGS[model]["size"]
    return module, jax.jit(module.init)(jax.random.key(0),
                                        jax.numpy.zeros((1, size, size, 3)))
  if model == "resnet50":
    return load_pretrained("resnet50",
                           os.path.join(directory, "weights.safetensors"))
  sd = np.load(os.path.join(directory, "weights.npz"))
  params, stats = {}, {}
  for i in range(4):
    unit = f"blocks.{i}"
    params[f"block{i + 1}"] = {"unit0": {
        "conv": {"kernel": sd[f"{unit}.0.weight"].transpose(2, 3, 1, 0)},
        "norm": {"scale": sd[f"{unit}.1.weight"],
                 "bias": sd[f"{unit}.1.bias"]}}}
    stats[f"block{i + 1}"] = {"unit0": {"norm": {
        "mean": sd[f"{unit}.1.running_mean"],
        "var": sd[f"{unit}.1.running_var"]}}}
  params["head"] = {"kernel": sd["fc.weight"].T, "bias": sd["fc.bias"]}
  return (SmallCNN(4, widths=(16, 32, 64, 128)),
          {"params": params, "batch_stats": stats})


# --------------------------------------------------------------------------
# Driver.

def _floor_parts(name: str, s: dict) -> list[tuple[str, float]]:
  """The floor of ``name`` as ``[(floor call, multiple)]``: the passes it
  must run, in units of the timed floor calls."""
  unit, images = _images_through_model(name, s)
  if name == "forward":
    return []
  if name in ("deeplift", "lrp"):
    # DeepLIFT: a gradient of x and a forward of the baseline. LRP with
    # EpsilonPlusFlat: the forward pass, then every convolution's z+ rule
    # runs the layer with W+ (a forward-sized pass) and its transpose (a
    # gradient-sized one): a forward and a gradient, as zennit does.
    return [("floor_fwd_batch", 1.0), ("floor_grad_batch", 1.0)]
  if images == s["batch"]:
    return [(f"floor_{unit}_batch", 1.0)]
  return [(f"floor_{unit}_pass", images / s["pass"])]


def _floor_seconds(name: str, s: dict, med: dict) -> float | None:
  """The floor of ``name`` from the median floor timings ``med``."""
  parts = _floor_parts(name, s)
  if not parts or any(med.get(call) is None for call, _ in parts):
    return None
  return sum(med[call] * k for call, k in parts)


def _random_input(model: str, directory: str, batch: int) -> None:
  """The benchmark's input without a PyTorch side (NHWC, normal)."""
  import numpy as np

  s = {**SETTINGS[model], "batch": batch}
  rng = np.random.default_rng(1)
  np.savez(os.path.join(directory, "input.npz"),
           x=rng.standard_normal((s["batch"], s["size"], s["size"], 3),
                                 dtype=np.float32),
           t=np.arange(s["batch"]) % s["classes"])


def _median(ts: list) -> float | None:
  return statistics.median(ts) if ts else None


def _ratio(a: float | None, b: float | None) -> float | None:
  return round(a / b, 2) if a and b else None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--worker", choices=("torch", "lapjax"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--model", default="resnet50", choices=SETTINGS)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--batch", type=int, default=None,
                      help="images per call (default: the model's, 4)")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--torch-python", default=TORCH_PYTHON,
                      help="the PyTorch side's Python; 'none': lapjax alone "
                      "(random weights), with its floors")
  parser.add_argument("--omp-wait-policy", default="PASSIVE",
                      help="OMP_WAIT_POLICY of the PyTorch side (PASSIVE: "
                      "on a shared machine OpenMP's spinning threads made "
                      "PyTorch 10-40x slower)")
  parser.add_argument("--device", default="cpu",
                      help="the PyTorch side's device (cpu, cuda); lapjax "
                      "runs on JAX's default backend")
  parser.add_argument("--xla-flags", action="append", default=[],
                      help="an extra lapjax worker with these XLA_FLAGS, "
                      "timed in the same rounds (repeatable), e.g. "
                      "--xla_cpu_experimental_ynn_fusion_type="
                      "LIBRARY_FUSION_TYPE_DOT")
  parser.add_argument("--lapjax-tree", action="append", default=[],
                      help="an extra lapjax worker importing lapjax from "
                      "this directory (holding lapjax/), timed in the same "
                      "rounds (repeatable): before/after a change")
  parser.add_argument("--row-by-row", action="store_true",
                      help="time one method (and its floors) at a time, "
                      "its rounds interleaved across the sides, and print "
                      "its row when done: rows come in --methods order "
                      "while later methods still compile (a cold GPU)")
  parser.add_argument("--log-dir", default=None,
                      help="where the workers' stderr goes (default: a "
                      "temporary directory)")
  args = parser.parse_args()
  if args.worker == "torch":
    return _torch_worker()
  if args.worker == "lapjax":
    return _lapjax_worker()

  s = {**SETTINGS[args.model]}
  if args.batch is not None:
    s["batch"] = args.batch
  methods = [m for m in args.methods.split(",") if m]
  with_torch = args.torch_python != "none"
  # Extra lapjax workers: (side, environment, what differs).
  extras = [(f"lapjax+flags{i}", {"XLA_FLAGS": f}, f"XLA_FLAGS={f}")
            for i, f in enumerate(args.xla_flags)]
  extras += [(f"lapjax+tree{i}", {TREE_ENV: os.path.abspath(d)},
              f"lapjax from {os.path.abspath(d)}")
             for i, d in enumerate(args.lapjax_tree)]
  sides = ["torch"] * with_torch + ["lapjax", *(e[0] for e in extras)]
  with tempfile.TemporaryDirectory() as directory:
    logs = args.log_dir or directory
    workers, info = {}, {}
    if with_torch:
      workers["torch"] = Worker(
          args.torch_python, "torch", os.path.join(logs, "torch_worker.log"),
          env={"OMP_WAIT_POLICY": args.omp_wait_policy})
      info = workers["torch"].call("setup", model=args.model,
                                   directory=directory, device=args.device,
                                   batch=s["batch"])
      if "error" in info:
        raise SystemExit(f"torch worker: {info['error']}")
    else:
      _random_input(args.model, directory, s["batch"])
    lapjax_sides = sides[1:] if with_torch else sides
    for side, env in zip(lapjax_sides, [None, *(e[1] for e in extras)]):
      workers[side] = Worker(sys.executable, "lapjax",
                             os.path.join(logs, f"{side}_worker.log"),
                             env=env)
      check = workers[side].call("setup", model=args.model,
                                 directory=directory, batch=s["batch"])
      if "error" in check:
        raise SystemExit(f"{side} worker: {check['error']}")
      print(json.dumps({"benchmark": "vs_pytorch_setup", "side": side,
                        "xla_flags": (env or {}).get("XLA_FLAGS"),
                        "lapjax_tree": (env or {}).get(TREE_ENV),
                        "model": args.model, **s,
                        "omp_wait_policy": args.omp_wait_policy if with_torch
                        else None, **info, **check}), flush=True)
    units = {_images_through_model(m, s) for m in methods}
    floors = sorted({f"floor_{u}_batch" for u in ("fwd", "grad")}
                    | {f"floor_{u}_pass" for u, n in units
                       if n != s["batch"]})
    if args.row_by_row:  # each method with its own floors, in turn
      groups = [([m], [(w, m) for w in sides]
                 + [(w, f) for f, _ in _floor_parts(m, s)
                    for w in lapjax_sides]) for m in methods]
    else:  # every method and floor in each round
      groups = [(methods, [(w, m) for m in methods for w in sides]
                 + [(w, f) for f in floors for w in lapjax_sides])]
    times, cpu, first, missing = {}, {}, {}, {}
    rows = []
    for group, jobs in groups:
      for job in jobs:
        times[job], cpu[job] = [], []
      for round_ in range(args.reps + 1):  # round 0: warm-up
        for side, name in jobs:
          if (side, name) in missing:
            continue
          r = workers[side].call("time", name=name)
          print(json.dumps({"benchmark": "vs_pytorch_call", "round": round_,
                            "side": side, "method": name, **r}),
                file=sys.stderr, flush=True)
          if "seconds" not in r:
            missing[(side, name)] = r.get("error", "not run on this side")
          elif round_:
            times[(side, name)].append(r["seconds"])
            cpu[(side, name)].append(r["cpu_seconds"])
          else:
            first[(side, name)] = r["seconds"]
      for m in group:
        rows.append(_row(m, s, args, sides, extras, times, cpu, first,
                         missing))
        print(json.dumps(rows[-1]), flush=True)
    for w in workers.values():
      w.close()

  print(json.dumps({"benchmark": "vs_pytorch_floors", "model": args.model,
                    **{f"{side}:{name}": round(_median(ts), 4)
                       for (side, name), ts in times.items()
                       if name.startswith("floor_") and ts}}), flush=True)
  _table(rows, extras)


def _row(m: str, s: dict, args, sides: list, extras: list, times: dict,
         cpu: dict, first: dict, missing: dict) -> dict:
  """Method ``m``'s result line: medians, ratios, floor, first calls."""
  med = {side: _median(times.get((side, m), [])) for side in
         ("torch", *sides)}
  med_cpu = {side: _median(cpu.get((side, m), [])) for side in
             ("torch", *sides)}
  floor = _floor_seconds(m, s, {name: _median(ts) for (side, name), ts
                                in times.items() if side == "lapjax"})
  row = {"benchmark": "vs_pytorch", "model": args.model, "method": m,
         "batch": s["batch"], "size": s["size"], "reps": args.reps,
         "torch_s": med["torch"], "lapjax_s": med["lapjax"],
         "torch_over_lapjax": _ratio(med["torch"], med["lapjax"]),
         "torch_cpu_s": med_cpu["torch"], "lapjax_cpu_s": med_cpu["lapjax"],
         "torch_over_lapjax_cpu": _ratio(med_cpu["torch"],
                                         med_cpu["lapjax"]),
         "lapjax_floor_s": floor,
         "lapjax_over_floor": _ratio(med["lapjax"], floor)}
  for side, _, _ in extras:
    row[f"{side}_s"] = med[side]
    row[f"{side}_cpu_s"] = med_cpu[side]
    row[f"{side}_over_lapjax"] = _ratio(med[side], med["lapjax"])
  for side in sides:
    # The warm-up call: compilation (graph capture, hooks) and one call.
    row[f"{side}_first_call_s"] = first.get((side, m))
    if (side, m) in missing:
      row[f"{side}_missing"] = missing[(side, m)]
  return row


def _fmt(v: float | None, unit: str = " s") -> str:
  if v is None:
    return "-"
  return f"{v:.3g}{unit}" if v < 10 else f"{v:.1f}{unit}"


def _table(rows: list, extras: list) -> None:
  extra = "".join(f" | {side} / lapjax" for side, _, _ in extras)
  print("\n| method | PyTorch | lapjax | PyTorch / lapjax | same, CPU time "
        f"| lapjax floor | lapjax / floor{extra} |\n|---|---|---|---|---|---"
        "|---|" + "---|" * len(extras))
  for r in rows:
    flags = "".join(f" | {_fmt(r[f'{side}_over_lapjax'], '')}"
                    for side, _, _ in extras)
    print(f"| {r['method']} | {_fmt(r['torch_s'])} | {_fmt(r['lapjax_s'])} "
          f"| {_fmt(r['torch_over_lapjax'], '')} "
          f"| {_fmt(r['torch_over_lapjax_cpu'], '')} "
          f"| {_fmt(r['lapjax_floor_s'])} "
          f"| {_fmt(r['lapjax_over_floor'], '')}{flags} |")
  for side, _, what in extras:
    print(f"\n{side}: {what}")


if __name__ == "__main__":
  main()
