"""Attribution methods with one contract (DESIGN.md §3).

``method(classifier, x, targets, *, options) -> maps``: ``x [B, H, W, C]``;
targets ``[B]``, ``[B, C']`` (one forward pass, ``vmap`` over classes) or a
``[B, K]`` float cotangent; raw signed maps ``[B, H, W]`` / ``[B, C', H, W]``
at input resolution. Batch-expanding methods take ``chunk_size``; stochastic
ones take ``key``.
"""

from lapjax.attribution import checks, postprocess
from lapjax.attribution.cam import (
                                    ablation_cam,
                                    grad_cam,
                                    grad_cam_plus_plus,
                                    guided_grad_cam,
                                    hires_cam,
                                    lafam,
                                    layer_cam,
                                    score_cam,
                                    xgrad_cam,
)
from lapjax.attribution.checks import jit_checked
from lapjax.attribution.deeplift import deeplift, deeplift_shap
from lapjax.attribution.fullgrad import fullgrad, fullgrad_classifier
from lapjax.attribution.gradients import (
                                    gradient,
                                    guided_backprop,
                                    guided_classifier,
                                    guided_relu,
                                    input_x_gradient,
                                    integrated_gradients,
                                    smoothgrad,
)
from lapjax.attribution.lap_maps import lap_maps
from lapjax.attribution.lens import (
                                    attribution_lens,
                                    best_vs_worst,
                                    lens_refine,
                                    top_k_classes,
)
from lapjax.attribution.optimisation import (
                                    extremal_perturbation,
                                    meaningful_perturbation,
)
from lapjax.attribution.paths import dix, guided_ig
from lapjax.attribution.perturbation import occlusion, relax, rise
from lapjax.attribution.relevance import (
                                    Composite,
                                    composite,
                                    epsilon_alpha2_beta1,
                                    epsilon_gamma_box,
                                    epsilon_plus,
                                    epsilon_plus_flat,
                                    lrp,
                                    relevance_cam,
                                    relevance_classifier,
)
from lapjax.attribution.relevance_transformer import (
                                    transformer_relevance_classifier,
)
from lapjax.attribution.sloc import calibrate_p, sloc, sloc_fit, sloc_m, sloc_xp
from lapjax.attribution.superpixel import (
                                    feature_ablation,
                                    kernel_shap,
                                    lime,
                                    shapley_sampling,
                                    slic_segments,
)
from lapjax.attribution.transformer import (
                                    attention_rollout,
                                    bi_attn,
                                    gae,
                                    inflow,
                                    inflow_classifier,
                                    t_attn,
                                    transformer_attribution,
)

__all__ = [
    "attribution_lens", "best_vs_worst", "calibrate_p", "checks", "grad_cam",
    "grad_cam_plus_plus", "gradient", "guided_backprop", "guided_classifier",
    "guided_grad_cam", "guided_relu", "input_x_gradient", "jit_checked",
    "lap_maps", "integrated_gradients", "lafam", "layer_cam", "lens_refine",
    "occlusion", "postprocess", "relax", "rise", "score_cam", "sloc",
    "sloc_fit", "sloc_m", "sloc_xp", "smoothgrad", "top_k_classes",
]
__all__ += [
    "Composite", "composite", "epsilon_alpha2_beta1", "epsilon_gamma_box",
    "epsilon_plus", "epsilon_plus_flat", "lrp", "relevance_cam",
    "relevance_classifier",
]
__all__ += ["dix", "guided_ig"]
__all__ += [
    "feature_ablation", "kernel_shap", "lime", "shapley_sampling",
    "slic_segments",
]
__all__ += [
    "attention_rollout", "bi_attn", "gae", "inflow", "inflow_classifier",
    "t_attn", "transformer_attribution", "transformer_relevance_classifier",
]
__all__ += [
    "ablation_cam", "fullgrad", "fullgrad_classifier", "hires_cam",
    "xgrad_cam",
]
__all__ += ["extremal_perturbation", "meaningful_perturbation"]
__all__ += ["deeplift", "deeplift_shap"]
