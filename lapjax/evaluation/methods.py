"""The attribution methods an evaluation runs, with their settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from lapjax import attribution as attr
from lapjax.classifier import Classifier, available_layers, from_flax
from lapjax.lap.dcs import DCSystem

# Which classifier of the model a method runs on (``method_classifiers``).
CLASSIFIER_KINDS = ("plain", "guided", "relevance", "fullgrad", "attention",
                    "transformer_relevance", "inflow")


@dataclasses.dataclass(frozen=True)
class Method:
  """An attribution method as evaluations run it.

  Attributes:
    fn: the method, ``fn(classifier, x, targets, **kwargs)``.
    kwargs: its options.
    classifier: the classifier it needs, one of ``CLASSIFIER_KINDS``:
      ``'plain'`` (``from_flax``), ``'guided'`` (guided-ReLU model),
      ``'relevance'`` (LRP rules and DeepLIFT), ``'fullgrad'`` (bias
      taps), ``'attention'`` (a transformer's attention taps added),
      ``'transformer_relevance'`` (T-Attr's relevance rules) and
      ``'inflow'`` (a ViT's block inputs, outputs and class probes).
    label_free: the map ignores the target, so the lens is meaningless.
  """
  fn: Callable[..., jax.Array]
  kwargs: dict
  classifier: str = "plain"
  label_free: bool = False


def _attention_taps(module: nn.Module, variables: Mapping[str, Any],
                    input_shape: Sequence[int]) -> list[str]:
  taps = [n for n, s in available_layers(module, variables,
                                         input_shape).items()
          if n.endswith("attn/probs") and len(s) == 4]
  if not taps:
    raise ValueError(
        f"the transformer methods read attention probabilities, but "
        f"{type(module).__name__} has no attention layer (no submodule "
        "path ending in 'attn/probs'); use them on a ViT")
  return taps


def method_classifiers(methods: Mapping[str, Method], module: nn.Module,
                       variables: Mapping[str, Any], *,
                       layers: Sequence[str], input_shape: Sequence[int]
                       ) -> dict[str, Classifier]:
  """The classifiers ``methods`` run on, by ``Method.classifier`` kind.

  Every kind taps ``layers`` (``fullgrad`` taps the bias terms instead);
  ``attention`` and ``transformer_relevance`` add the model's attention
  probabilities.
  """
  kinds = {m.classifier for m in methods.values()}
  unknown = kinds - set(CLASSIFIER_KINDS)
  if unknown:
    raise ValueError(f"unknown Method.classifier {sorted(unknown)}; "
                     f"expected one of {CLASSIFIER_KINDS}")
  layers = list(layers)
  out = {}
  for kind in sorted(kinds):
    if kind == "plain":
      out[kind] = from_flax(module, variables, layers=layers)
    elif kind == "guided":
      out[kind] = attr.guided_classifier(module, variables, layers=layers)
    elif kind == "relevance":
      out[kind] = attr.relevance_classifier(module, variables,
                                            layers=layers)
    elif kind == "fullgrad":
      out[kind] = attr.fullgrad_classifier(module, variables,
                                           input_shape=input_shape)
    elif kind == "inflow":
      out[kind] = attr.inflow_classifier(module, variables)
    else:
      taps = layers + _attention_taps(module, variables, input_shape)
      build = (from_flax if kind == "attention"
               else attr.transformer_relevance_classifier)
      out[kind] = build(module, variables, layers=taps)
  return out


def standard_methods(layer: str, *, key: jax.Array, image_size: int,
                     ig_steps: int = 32, rise_masks: int = 500,
                     smoothgrad_samples: int = 16, sloc_masks: int = 500,
                     sloc_steps: int = 501,
                     sloc_p: tuple[float, ...] | None = None,
                     baseline: float | str = 0.0,
                     lap_layers: tuple[str, ...] = (),
                     dcs: DCSystem | None = None, lap_decay: float = 0.8
                     ) -> dict[str, Method]:
  """Every lapjax method; CAMs at ``layer``, occlusion windows of
  ``image_size // 8`` pixels at half-window stride; ``baseline`` (a number
  or ``'blur'``) for every method that takes one; ``sloc_xp`` only when
  ``sloc_p`` (``attribution.calibrate_p``) is given; with ``lap_layers``
  (LAP-map taps) and ``dcs``, ``lap`` (depth-aggregated) and ``lap1`` ..
  ``lapL`` (one LAP each)."""
  sloc = {"key": key, "num_masks": sloc_masks, "steps": sloc_steps,
          "baseline": baseline}
  window = max(1, image_size // 8)
  laps = {}
  if lap_layers:
    base = {"layers": tuple(lap_layers), "dcs": dcs, "decay": lap_decay}
    laps["lap"] = Method(attr.lap_maps, base)
    laps.update({f"lap{i + 1}": Method(attr.lap_maps, {**base, "lap": i})
                 for i in range(len(lap_layers))})
  return {**laps,
      "gradient": Method(attr.gradient, {}),
      "input_x_gradient": Method(attr.input_x_gradient, {}),
      "integrated_gradients": Method(attr.integrated_gradients,
                                     {"steps": ig_steps,
                                      "baseline": baseline}),
      "smoothgrad": Method(attr.smoothgrad,
                           {"key": key, "samples": smoothgrad_samples}),
      "guided_backprop": Method(attr.guided_backprop, {},
                                     classifier="guided"),
      "grad_cam": Method(attr.grad_cam, {"layer": layer}),
      "grad_cam_plus_plus": Method(attr.grad_cam_plus_plus,
                                   {"layer": layer}),
      "layer_cam": Method(attr.layer_cam, {"layer": layer}),
      "guided_grad_cam": Method(attr.guided_grad_cam, {"layer": layer},
                                classifier="guided"),
      "score_cam": Method(attr.score_cam, {"layer": layer,
                                           "baseline": baseline}),
      "occlusion": Method(attr.occlusion, {
          "window": (window, window), "fill": baseline,
          "stride": (max(1, window // 2), max(1, window // 2))}),
      "rise": Method(attr.rise, {"key": key, "num_masks": rise_masks,
                                 "baseline": baseline}),
      "lafam": Method(attr.lafam, {"layer": layer}, label_free=True),
      "sloc": Method(attr.sloc, sloc),
      "sloc_m": Method(attr.sloc_m, sloc),
      **({"sloc_xp": Method(attr.sloc_xp, {**sloc, "p": sloc_p})}
         if sloc_p is not None else {}),
      **relevance_methods(layer, key=key, baseline=baseline),
      **comparator_methods(layer, key=key, image_size=image_size,
                           ig_steps=ig_steps, baseline=baseline),
      **transformer_methods(),
  }


def relevance_methods(layer: str, *, key: jax.Array,
                      baseline: float | str = 0.0) -> dict[str, Method]:
  """LRP (epsilon-plus-flat), Relevance-CAM at ``layer`` (epsilon-plus),
  DeepLIFT (rescale) and DeepLIFT-SHAP over 16 uniform baselines."""
  return {
      "lrp": Method(attr.lrp, {"composite": "epsilon_plus_flat"},
                    classifier="relevance"),
      "relevance_cam": Method(attr.relevance_cam, {"layer": layer},
                              classifier="relevance"),
      "deeplift": Method(attr.deeplift, {"baseline": baseline},
                         classifier="relevance"),
      "deeplift_shap": Method(attr.deeplift_shap, {"key": key,
                                                   "samples": 16},
                              classifier="relevance"),
  }


def comparator_methods(layer: str, *, key: jax.Array, image_size: int,
                       ig_steps: int = 32, baseline: float | str = 0.0,
                       superpixels: int = 64) -> dict[str, Method]:
  """The papers' comparators (issue [comparators]).

  CAMs at ``layer``; Guided IG with ``ig_steps``; Extremal Perturbations
  and Meaningful Perturbation with their reference settings scaled from
  224 pixels to ``image_size``; superpixel methods over SLIC segments
  (``slic_segments``' defaults, computed on the host inside the jitted
  call) with at most ``superpixels`` segments an image.
  """
  s = image_size / 224
  on_segments = {"num_segments": superpixels, "baseline": baseline}
  return {
      "ablation_cam": Method(attr.ablation_cam, {"layer": layer}),
      "xgrad_cam": Method(attr.xgrad_cam, {"layer": layer}),
      "hires_cam": Method(attr.hires_cam, {"layer": layer}),
      "fullgrad": Method(attr.fullgrad, {}, classifier="fullgrad"),
      "guided_ig": Method(attr.guided_ig, {"steps": ig_steps,
                                           "baseline": baseline}),
      "dix": Method(attr.dix, {"layer": layer, "baseline": baseline}),
      "extremal_perturbation": Method(attr.extremal_perturbation, {
          "areas": (0.1,), "step": max(1, round(7 * s)),
          "sigma": 21 * s, "max_blur": 20 * s,
          "perturbation": "blur" if baseline == "blur" else "fade"}),
      "meaningful_perturbation": Method(attr.meaningful_perturbation, {
          "key": key, "mask_scale": max(1, round(8 * s)),
          "mask_blur": 5 * s, "blur_sigma": 10 * s,
          "jitter": max(1, round(4 * s)), "baseline": baseline}),
      "feature_ablation": Method(attr.feature_ablation, on_segments),
      "shapley_sampling": Method(attr.shapley_sampling,
                                 {**on_segments, "key": key}),
      "kernel_shap": Method(attr.kernel_shap, {**on_segments, "key": key}),
      "lime": Method(attr.lime, {**on_segments, "key": key}),
  }


def transformer_methods() -> dict[str, Method]:
  """Attention rollout, GAE (Grad-Rollout), T-Attr, Bi-attn, T-attn and
  InFlow (transformers only; Bi-attn and T-attn from block 1, for shallow
  models)."""
  return {
      "attention_rollout": Method(attr.attention_rollout, {},
                                  classifier="attention", label_free=True),
      "grad_rollout": Method(attr.gae, {}, classifier="attention"),
      "t_attr": Method(attr.transformer_attribution, {},
                       classifier="transformer_relevance"),
      "bi_attn": Method(attr.bi_attn, {"start_block": 1},
                        classifier="attention"),
      "t_attn": Method(attr.t_attn, {"start_block": 1},
                       classifier="attention"),
      "inflow": Method(attr.inflow, {}, classifier="inflow"),
  }
