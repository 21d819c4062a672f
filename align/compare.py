"""How two frameworks' tensors are compared, and what counts as agreement.

float64 proves semantics: every tensor must satisfy max_rel <= FP64_MAX_REL, where
max_rel = max|a - b| / max|reference| (the reference is the torch side).

float32 measures rounding. A float32 difference is accepted when rounding explains it: each framework's
own float32-vs-float64 error on the same tensor (its noise) is measured with the same weights and inputs,
and the cross-framework difference must stay within NOISE_MULTIPLE times the noise floor, where

    floor = max(min(noise_torch, noise_paddle), ULP_FLOOR * max|reference|)

The smaller of the two noises is used on purpose: by the triangle inequality the cross difference can
never exceed noise_torch + noise_paddle + the float64 difference, so a floor built from the larger noise
could not fail. With the smaller one, a framework whose float32 path is much less accurate than the
other's (lower-precision kernels, TF32, a float32 constant where float64 is meant) fails. The ULP_FLOOR
term keeps tensors that both frameworks compute exactly (noise 0) from demanding bit equality.
NOISE_MULTIPLE = 4 leaves room for two independent rounding sequences (typically ~sqrt(2) of one) and for
the max over many elements.
"""
import json
from pathlib import Path

import numpy as np

THRESHOLDS = json.loads((Path(__file__).with_name("thresholds.json")).read_text())
FP64_MAX_REL = THRESHOLDS["float64_max_rel"]
FP64_TRAIN_MAX_REL = THRESHOLDS["float64_train_max_rel"]
NOISE_MULTIPLE = THRESHOLDS["float32_noise_multiple"]
ULP_FLOOR = THRESHOLDS["float32_ulp_floor"]           # float32 machine epsilon


def _as_array(x):
    return np.asarray(x)


def diff_stats(reference, other):
    """max_abs, mean_abs and max_rel of `other` against `reference`, computed in float64."""
    ref = _as_array(reference).astype(np.float64)
    oth = _as_array(other).astype(np.float64)
    if ref.shape != oth.shape:
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "max_rel": float("inf"),
                "shape_mismatch": [list(ref.shape), list(oth.shape)]}
    if ref.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0}
    finite = np.isfinite(ref) & np.isfinite(oth)
    same_nonfinite = (~finite) & ((ref == oth) | (np.isnan(ref) & np.isnan(oth)))
    if not np.all(finite | same_nonfinite):
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "max_rel": float("inf"),
                "nonfinite_mismatch": int(np.sum(~(finite | same_nonfinite)))}
    d = np.abs(ref - oth)[finite]
    scale = float(np.max(np.abs(ref[finite]))) if d.size else 0.0
    max_abs = float(d.max()) if d.size else 0.0
    mean_abs = float(d.mean()) if d.size else 0.0
    if scale > 0:
        max_rel = max_abs / scale
    else:
        max_rel = 0.0 if max_abs == 0 else float("inf")
    return {"max_abs": max_abs, "mean_abs": mean_abs, "max_rel": max_rel}


def check_float64(reference, other, max_rel=FP64_MAX_REL):
    stats = diff_stats(reference, other)
    stats["tolerance_rel"] = max_rel
    stats["passed"] = bool(stats["max_rel"] <= max_rel)
    return stats


def _max_abs(a, b):
    a = _as_array(a).astype(np.float64)
    b = _as_array(b).astype(np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    d = np.abs(a - b)
    d = d[np.isfinite(d)]
    return float(d.max()) if d.size else 0.0


def check_float32(torch32, paddle32, torch64, paddle64, multiple=NOISE_MULTIPLE, fp64_max_rel=FP64_MAX_REL):
    """Cross-framework float32 difference against each framework's own float32-vs-float64 noise; the two
    float64 runs must agree within fp64_max_rel as well."""
    stats = diff_stats(torch32, paddle32)
    ref64 = _as_array(torch64).astype(np.float64)
    scale = float(np.max(np.abs(ref64[np.isfinite(ref64)]))) if ref64.size and np.isfinite(ref64).any() else 0.0
    if scale > 0 and np.isfinite(stats["max_abs"]):
        stats["max_rel"] = stats["max_abs"] / scale
    noise_torch = _max_abs(torch32, torch64)
    noise_paddle = _max_abs(paddle32, paddle64)
    floor = max(min(noise_torch, noise_paddle), ULP_FLOOR * scale)
    tolerance = multiple * floor
    stats.update({
        "noise_torch": noise_torch,
        "noise_paddle": noise_paddle,
        "noise_floor": floor,
        "tolerance_abs": tolerance,
        "ratio_to_floor": (stats["max_abs"] / floor) if floor > 0 else (0.0 if stats["max_abs"] == 0 else float("inf")),
        "float64_max_rel": diff_stats(torch64, paddle64)["max_rel"],
    })
    stats["passed"] = bool(stats["max_abs"] <= tolerance and stats["float64_max_rel"] <= fp64_max_rel)
    return stats


def check_exact(reference, other):
    """For integer outputs (labels, counts, bin indices): equality, reported with the same fields."""
    stats = diff_stats(reference, other)
    stats["passed"] = bool(stats["max_abs"] == 0)
    return stats


def compare_runs(dtype, torch_run, paddle_run, torch_run64=None, paddle_run64=None, fp64_max_rel=FP64_MAX_REL):
    """Compare two {key: array} dicts over their common keys, in torch_run's order.

    Integer and boolean arrays must be equal. For dtype 'float32' the float64 runs of both frameworks
    (same weights, same inputs) supply the noise floor. fp64_max_rel: the float64 limit (training uses
    FP64_TRAIN_MAX_REL).
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if dtype == "float32" and (torch_run64 is None or paddle_run64 is None):
        raise ValueError("float32 comparison needs the float64 runs of both frameworks for the noise floor")
    results = {}
    for key, t in torch_run.items():
        if key not in paddle_run:
            continue
        t, p = np.asarray(t), np.asarray(paddle_run[key])
        if not np.issubdtype(t.dtype, np.floating):
            results[key] = check_exact(t, p)
        elif dtype == "float64":
            results[key] = check_float64(t, p, fp64_max_rel)
        else:
            results[key] = check_float32(t, p, torch_run64[key], paddle_run64[key], fp64_max_rel=fp64_max_rel)
    return results
