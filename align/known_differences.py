"""Known Paddle/torch defects and conventions, each with a signature a report can be matched against.

When a check's first divergence matches a signature, the report names the difference, the module where it
shows and the workaround (summary["diagnosis"]["known_difference"]). A signature is a predicate over what
the report knows at that key: the level (forward, backward, train), the dtype, the key and its stats, both
sides' arrays, the classes of the modules on each side, the training recipe. Every entry has a canary test
showing the framework still behaves so (tests/test_explain.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@functools.lru_cache(maxsize=1)
def _float32_mean_scales() -> np.ndarray:
    """n * float32(1/n) - 1 for every map size n up to 2^20: the relative scale a float32 1/(H*W) puts on a
    gradient (computed once, when a signature first needs it)."""
    n = np.arange(1, 1 << 20, dtype=np.float64)
    return n * (1.0 / n).astype(np.float32).astype(np.float64) - 1.0


@dataclass(frozen=True)
class Context:
    level: str                                        # forward / backward / train
    dtype: str
    key: str
    stats: dict
    torch_value: np.ndarray | None = None
    paddle_value: np.ndarray | None = None
    torch_classes: frozenset = frozenset()           # class names of every module on each side
    paddle_classes: frozenset = frozenset()
    paddle_modules: dict = field(default_factory=dict)   # Paddle module name -> class name
    recipe: Any = None


@dataclass(frozen=True)
class KnownDifference:
    name: str
    what: str
    signature: str                                    # the signature in words
    workaround: str
    matches: Callable[[Context], str | None]          # -> the module where it shows, or None


def _uniform_scale(ctx: Context) -> float | None:
    """p / t as one number when every element of the key carries the same relative scale, else None."""
    t, p = ctx.torch_value, ctx.paddle_value
    if t is None or p is None or np.shape(t) != np.shape(p):
        return None
    t, p = np.asarray(t, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    big = np.abs(t) > 1e-3 * np.abs(t).max() if t.size and np.abs(t).max() > 0 else np.zeros(t.shape, bool)
    if not big.any():
        return None
    r = p[big] / t[big]
    scale = float(np.median(r))
    return scale if float(np.abs(r - scale).max()) <= 1e-3 * abs(scale - 1.0) + 1e-15 else None


def _first(ctx: Context, class_name: str) -> str:
    return next((n for n, c in ctx.paddle_modules.items() if c == class_name), class_name)


def _adaptive_pool_backward(ctx: Context) -> str | None:
    if ctx.level != "backward" or ctx.dtype != "float64" or "AdaptiveAvgPool2D" not in ctx.paddle_classes:
        return None
    scale = _uniform_scale(ctx)
    if scale is None or scale == 1.0:
        return None
    hit = np.isclose(_float32_mean_scales(), scale - 1.0, rtol=1e-6, atol=1e-15).any()
    return _first(ctx, "AdaptiveAvgPool2D") if hit else None


def _float32_representable(x: float) -> bool:
    return float(np.float32(x)) == float(x)


def _momentum_float32(ctx: Context) -> str | None:
    r = ctx.recipe
    if ctx.level != "train" or ctx.dtype != "float64" or r is None or ctx.key.startswith("step000."):
        return None
    if _float32_representable(r.momentum) and _float32_representable(r.weight_decay):
        return None
    return "optimizer.Momentum"


def _biased_running_var(ctx: Context) -> str | None:
    if not (ctx.key.endswith("_variance") or ctx.key.endswith("running_var")):
        return None
    scale = _uniform_scale(ctx)
    return _first(ctx, "BatchNorm2D") if scale is not None and 0.5 <= scale < 1.0 else None


def _hardsigmoid(ctx: Context) -> str | None:
    if ctx.level != "forward":
        return None
    hit = {"Hardsigmoid", "Hardswish"} & set(ctx.paddle_classes) & set(ctx.torch_classes)
    return _first(ctx, sorted(hit)[0]) if hit and ctx.stats.get("locality") != "propagated" else None


def _nms_threshold(ctx: Context) -> str | None:
    if ctx.level == "forward" and ctx.dtype == "float64" and "detections" in ctx.key:
        return "paddle.vision.ops.nms"
    return None


def _never(ctx: Context) -> str | None:
    return None


KNOWN = (
    KnownDifference(
        "adaptive_avg_pool2d_float64_backward",
        "Paddle 3.3.1 nn.AdaptiveAvgPool2D's float64 backward scales the gradient by float32(1/(H*W))",
        "float64 backward, a Paddle AdaptiveAvgPool2D in the model, and every element of the first diverging "
        "gradient scaled by the same n * float32(1/n) (e.g. 1 + 1.5e-8 for a 4x5 map)",
        "pool with a plain mean over H and W (paddle_impl/backbones/resnet.py GlobalAvgPool)",
        _adaptive_pool_backward),
    KnownDifference(
        "momentum_float32_coefficients",
        "Paddle's optimizer.Momentum passes mu and the L2 coefficient to its kernel as float32, even for float64 "
        "parameters",
        "float64 training, the first step aligned and later ones diverging, with a momentum or weight decay "
        "that float32 cannot represent",
        "use float32-representable values on both sides (float(np.float32(0.9)), align/training.py Recipe)",
        _momentum_float32),
    KnownDifference(
        "batchnorm_conventions",
        "Paddle BatchNorm: momentum is 1 - torch's and kept in float32, epsilon is a float32 attribute, and the "
        "running variance is updated with the biased batch variance (torch: unbiased)",
        "a running-variance buffer smaller on the Paddle side by one uniform factor (N-1)/N after a train step",
        "compare with frozen statistics (norm_eval, as detectors train) or convert momentum (0.1 <-> 0.9)",
        _biased_running_var),
    KnownDifference(
        "hardsigmoid_slope",
        "paddle.nn.functional.hardsigmoid defaults to slope 0.1666667 and takes slope and offset as float32 "
        "attributes (slope=1/6 still rounds to float32, 1e-8 off in float64); torch uses 1/6 exactly",
        "forward, the first divergence local to a Hardsigmoid or Hardswish module",
        "write relu6(x + 3) / 6 in the Paddle twin (Hardswish: x * relu6(x + 3) / 6)",
        _hardsigmoid),
    KnownDifference(
        "float_equality_tolerance",
        "Paddle's float == has been |a - b| < 1e-8 rather than exact equality (phi's EqualFunctor in earlier "
        "releases; Paddle 3.3.1's CPU kernel is exact, tests/test_explain.py)",
        "integer decisions (ties, matches against a maximum) that differ where two float values are within 1e-8",
        "compare with >= against the maximum instead of == (paddle_impl/assigners/max_iou.py)",
        _never),
    KnownDifference(
        "cross_entropy_clamp_64",
        "Paddle 3.3.1's nn.functional.cross_entropy (softmax, hard labels) and log_softmax clamp log p at -64, "
        "in float64 too (a sample's loss is at most 64); the gradient's probabilities are floored at exp(-64) only",
        "a softmax cross-entropy loss lower on the Paddle side while every gradient agrees (logits more than 64 "
        "apart from the label's)",
        "minus the label's x - logsumexp(x) (paddle_impl/roi_heads/bbox_head.py)",
        _never),                # a loss value alone cannot tell it from other lower losses
    KnownDifference(
        "sqrt_float32_lanes",
        "Paddle 3.3.1's CPU sqrt of float32 rounds 8-lane chunks approximately (up to 3 ulp on Intel CPUs) and "
        "the tail exactly, so equal inputs get different roots by position; torch's (MKL's on Intel) is 1 ulp "
        "off for about 1% of values, the same at every position",
        "float32 choices decided by a tie of distances (ATSS's nearest anchors) that differ between the "
        "frameworks or between CPUs, while float64 agrees",
        "take the root in float64 and round it to float32 once (rounded_sqrt in */assigners/assign_utils.py)",
        _never),                # within float32 rounding everywhere but at a tie
    KnownDifference(
        "nms_float32_threshold",
        "paddle.vision.ops.nms takes its IoU threshold as a float32 attribute",
        "float64 detections that differ where a pair's IoU is within float32 rounding of the threshold",
        "keep thresholds float32-representable, or compare detections on float32-stable inputs",
        _nms_threshold),
)


def match(ctx: Context) -> dict | None:
    """The first known difference whose signature the context matches, as a report entry, or None."""
    for known in KNOWN:
        where = known.matches(ctx)
        if where:
            return {"name": known.name, "what": known.what, "where": where, "signature": known.signature,
                    "workaround": known.workaround}
    return None


def table() -> str:
    """The table in Markdown (README)."""
    rows = ["| difference | signature | workaround |", "| --- | --- | --- |"]
    rows += [f"| {k.what} | {k.signature} | {k.workaround} |" for k in KNOWN]
    return "\n".join(rows)
