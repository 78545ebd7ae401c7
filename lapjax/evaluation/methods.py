"""The attribution methods an evaluation runs, with their settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from lapjax import attribution as attr
from lapjax.lap.dcs import DCSystem


@dataclasses.dataclass(frozen=True)
class Method:
  """An attribution method as evaluations run it."""
  fn: Callable[..., jax.Array]
  kwargs: dict
  guided: bool = False        # needs the guided-ReLU classifier
  label_free: bool = False    # the lens is meaningless (identical maps)


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
      "guided_backprop": Method(attr.guided_backprop, {}, guided=True),
      "grad_cam": Method(attr.grad_cam, {"layer": layer}),
      "grad_cam_plus_plus": Method(attr.grad_cam_plus_plus,
                                   {"layer": layer}),
      "layer_cam": Method(attr.layer_cam, {"layer": layer}),
      "guided_grad_cam": Method(attr.guided_grad_cam, {"layer": layer},
                                guided=True),
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
  }
