"""How two frameworks' tensors are compared, and what counts as agreement: every rule, in one place.

Every compared tensor gets a stats dict with `rule` (which rule decided), `passed`, and `ratio`: the
fraction of its tolerance it used (<= 1 passes), so a report shows its margin. The rules:

float64 ("float64") proves semantics: max_rel <= FP64_MAX_REL, where max_rel = max|a - b| / max|reference|
(the reference is the torch side).

exact ("exact"): integer and boolean tensors (labels, counts, bin indices) must be equal.

float32 ("float32") measures rounding. Each framework's own float32-vs-float64 error on the same tensor
(same weights, same inputs) is its noise. The cross-framework difference must stay within NOISE_MULTIPLE
times the noise floor:

    floor = max(min(envelope_torch, noise_paddle), ULP_FLOOR * max|reference|)
    envelope_torch = max(noise_torch, noise of torch's other legitimate kernels)

The envelope is the reference framework's float32 error over its legitimate kernel choices: the tools run
torch's float32 pass a second time with the other convolution backend (oneDNN off when it is on, and the
reverse; align.forward.torch_kernel_variant). Float32 accuracy is a property of the kernels a CPU gets:
measured on an AVX-512 EPYC at retina_r50's neck.p6_conv, torch's oneDNN error is 1.3e-5 under its default
ISA (AVX512_CORE) and 6.8e-5 under ONEDNN_MAX_CPU_ISA=AVX2; torch's native convolution gives 9.5e-5 and
Paddle's 8.4e-5 under any cap. Using torch's default run alone made the verdict depend on the CPU (a 6.1x
ratio at AVX512_CORE, passing at AVX2); with the envelope the same tensor is at 0.96x on every cap.

The difference judged is Paddle's distance to the *nearest* of torch's legitimate float32 runs (its default and
its other backend): torch's default kernel may be legitimately much less accurate than Paddle's, and then the
two frameworks differ by torch's error alone. Measured under ONEDNN_MAX_CPU_ISA=AVX2 at PP-YOLOE's
yolo_head.pred_reg (3x3 convs, fan-in 1728): torch's oneDNN error 6.6e-7 vs Paddle's 8.1e-8 (8x); against
torch's default run that is 1.46x the tolerance, against torch's native run 0.20x. A defect in one twin's code
is in every run of that framework, so this cannot excuse it.

Why it cannot pass vacuously: by the triangle inequality the cross difference never exceeds
noise_torch + noise_paddle + the float64 difference, so a floor built from the *larger* noise could not
fail. The floor uses the smaller of (torch's envelope, Paddle's noise): a framework whose float32 path is
much less accurate than every legitimate kernel of the other (TF32, bfloat16, float16, a float32 constant
where float64 is meant) makes the cross difference ~ its own noise >> the floor, and fails.

NOISE_MULTIPLE = 8. With two independent rounding sequences whose accuracies differ by a factor r, the
cross difference is ~sqrt(1 + r^2) times the smaller noise, and the max over many elements adds ~20%.
Legitimate accuracy gaps that the envelope does not absorb, measured here: Paddle's convolution up to
2.8x less accurate than both torch backends (layer4.0.conv2 in resnet50 and retina_r50 forward: ratio
3.3-3.9 to the floor),
torch's backward up to 3.4x less accurate than Paddle's (resnet50 backward, layer3.1.bn1: ratio 4.15) and,
under ONEDNN_MAX_CPU_ISA=AVX2, 6x on a near-zero gradient (retina_r50_ghm, neck.p6_conv.bias: ratio 6.3),
and up to ~6x reported for forward kernels on other CPUs, i.e. ratios up to ~7.3: 8 covers them. Planted
float32-only defects (align/defects.py, tests/test_float32_sensitivity.py) in one torch or one Paddle
layer of resnet50 and retina_r50, forward and backward, land at 77-3200x the floor at that layer (a
float16 round trip of neck.p6_conv's input: 77x; bfloat16: 550-3200x; TF32 truncation: 135-700x), so the
rule has a 9x margin on both sides. benchmarks/float32_stability.py prints the worst passing ratio per
check under every ISA cap, thread count and torch backend. The ULP_FLOOR term keeps tensors that both
frameworks compute exactly (noise 0) from demanding bit equality.

float32 with discrete events ("float32-events"): where float32 rounding flips a discrete decision (a ReLU
mask, a GHM bin, a top-k pick), the float32 run and the float64 run are different functions and their
difference is not rounding. The float64 pass is then replayed on each float32 run's own decisions
(ref_torch, ref_paddle); what the flipped decisions explain is ref_torch - ref_paddle, and the residual
(t32 - p32) - (ref_torch - ref_paddle) must stay within NOISE_MULTIPLE x the floor built, as above, from
each run's distance to its own replay. The events are counted and named in the report.

metric ("metric"): a COCO metric of both prediction sets; float64 must give identical metrics, float32
predictions may flip at a score or IoU threshold and move AP by a detection: |difference| <= METRIC_MAX_ABS.
"reported": shown, not judged (float32 prediction counts).

float64 twins ("float64-twins"): float32 training steps after the first are judged on their float64 twins
(align/train_diff.py says why).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

DTYPES = ("float64", "float32")                       # float64 proves semantics, float32 measures rounding


def check_dtype(dtype: str) -> str:
    """dtype itself, or ValueError naming the accepted ones."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


THRESHOLDS = json.loads((Path(__file__).with_name("thresholds.json")).read_text())
FP64_MAX_REL = THRESHOLDS["float64_max_rel"]
FP64_TRAIN_MAX_REL = THRESHOLDS["float64_train_max_rel"]
NOISE_MULTIPLE = THRESHOLDS["float32_noise_multiple"]
ULP_FLOOR = THRESHOLDS["float32_ulp_floor"]           # float32 machine epsilon
METRIC_MAX_ABS = {"float64": THRESHOLDS["metric_float64_max_abs"], "float32": THRESHOLDS["metric_float32_max_abs"]}


def _f64(x):
    return np.asarray(x, dtype=np.float64)          # no copy when it already is float64


def _ratio(value, limit):
    if limit > 0:
        return value / limit
    return 0.0 if value == 0 else float("inf")


def _abs_max(a):
    return float(max(a.max(), -a.min()))


def diff_stats(reference: np.ndarray, other: np.ndarray) -> dict:
    """max_abs, mean_abs and max_rel of `other` against `reference`, computed in float64.

    Non-finite values agree only where both sides have the same one at the same element; those elements
    are counted (`nonfinite`) and left out of the statistics. `compared` counts the elements compared: a
    non-empty tensor with none finite compared nothing and gets infinite differences (it fails every rule)."""
    ref, oth = _f64(reference), _f64(other)
    if ref.shape != oth.shape:
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "max_rel": float("inf"),
                "shape_mismatch": [list(ref.shape), list(oth.shape)]}
    if ref.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0, "compared": 0}
    ref, oth = ref.reshape(-1), oth.reshape(-1)          # 1-d: a 0-d subtraction would give a scalar
    d = np.subtract(ref, oth)
    np.abs(d, out=d)
    if np.isfinite(d.sum()):          # the common case, in four passes: both sides finite everywhere
        return _stats_of(float(d.max()), float(d.mean()), _abs_max(ref), None, d.size)
    finite = np.isfinite(ref) & np.isfinite(oth)
    same_nonfinite = (~finite) & ((ref == oth) | (np.isnan(ref) & np.isnan(oth)))
    if not np.all(finite | same_nonfinite):
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "max_rel": float("inf"),
                "nonfinite_mismatch": int(np.sum(~(finite | same_nonfinite)))}
    d = d[finite]
    if not d.size:
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "max_rel": float("inf"), "compared": 0,
                "nonfinite": int(ref.size), "all_nonfinite": True}
    return _stats_of(float(d.max()), float(d.mean()), _abs_max(ref[finite]), int(np.sum(~finite)) or None, d.size)


def _stats_of(max_abs, mean_abs, scale, nonfinite, compared):
    stats = {"max_abs": max_abs, "mean_abs": mean_abs, "max_rel": _ratio(max_abs, scale) if scale else
             (0.0 if max_abs == 0 else float("inf")), "compared": int(compared)}
    if nonfinite:
        stats["nonfinite"] = nonfinite
    return stats


def check_float64(reference: np.ndarray, other: np.ndarray, max_rel: float = FP64_MAX_REL) -> dict:
    stats = diff_stats(reference, other)
    stats.update(rule="float64", tolerance_rel=max_rel, ratio=_ratio(stats["max_rel"], max_rel))
    stats["passed"] = bool(stats["max_rel"] <= max_rel)
    return stats


def max_abs_diff(a, b) -> float:
    """max |a - b| over the elements where it is finite (inf for differing shapes)."""
    a, b = _f64(a), _f64(b)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    d = np.subtract(a.reshape(-1), b.reshape(-1))
    np.abs(d, out=d)
    if np.isfinite(d.sum()):
        return float(d.max())
    d = d[np.isfinite(d)]
    return float(d.max()) if d.size else 0.0


def scale_of(ref) -> float:
    """max |ref| over its finite elements."""
    ref = _f64(ref)
    if not ref.size:
        return 0.0
    if np.isfinite(ref.sum()):
        return _abs_max(ref)
    finite = ref[np.isfinite(ref)]
    return _abs_max(finite) if finite.size else 0.0


def _floor_fields(noise_torch, noise_alt, noise_paddle, scale, multiple):
    envelope = max([noise_torch] + list(noise_alt))
    floor = max(min(envelope, noise_paddle), ULP_FLOOR * scale)
    fields = {"noise_torch": noise_torch, "noise_paddle": noise_paddle, "noise_floor": floor,
              "tolerance_abs": multiple * floor}
    if noise_alt:
        fields.update(noise_torch_variant=max(noise_alt), noise_torch_envelope=envelope)
    return fields


def check_float32(torch32: np.ndarray, paddle32: np.ndarray, torch64: np.ndarray, paddle64: np.ndarray,
                  multiple: float = NOISE_MULTIPLE, fp64_max_rel: float = FP64_MAX_REL,
                  torch_variants: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> dict:
    """The float32 rule (module docstring). torch_variants: (float32 value, its float64 counterpart) pairs
    of torch's runs with its other legitimate kernels, same weights and inputs; they widen torch's side of
    the floor to its envelope."""
    return float32_verdict(diff_stats(torch32, paddle32), scale_of(torch64), max_abs_diff(torch32, torch64),
                           [max_abs_diff(v, r) for v, r in torch_variants], max_abs_diff(paddle32, paddle64),
                           diff_stats(torch64, paddle64)["max_rel"], multiple, fp64_max_rel,
                           [max_abs_diff(v, paddle32) for v, _ in torch_variants])


def float32_verdict(cross: dict, scale: float, noise_torch: float, noise_alt: Sequence[float],
                    noise_paddle: float, float64_max_rel: float, multiple: float = NOISE_MULTIPLE,
                    fp64_max_rel: float = FP64_MAX_REL, cross_alt: Sequence[float] = ()) -> dict:
    """check_float32 from its parts, each measured when its runs were at hand (align/forward.py compares
    runs as they arrive): cross = diff_stats(torch32, paddle32), scale = max|torch64|, the noises are
    max|float32 - float64| of torch, of torch's other kernels and of Paddle, float64_max_rel that of
    diff_stats(torch64, paddle64), cross_alt max|variant32 - paddle32| of each of torch's other kernels: the
    judged difference is Paddle's distance to the nearest of torch's legitimate float32 runs."""
    stats = dict(cross)
    if scale > 0 and np.isfinite(stats["max_abs"]):
        stats["max_rel"] = stats["max_abs"] / scale
    stats.update(_floor_fields(noise_torch, list(noise_alt), noise_paddle, scale, multiple))
    judged = min([stats["max_abs"], *cross_alt])
    if cross_alt:
        stats.update(max_abs_torch_variant=min(cross_alt), nearest_torch_run="default" if judged == stats["max_abs"]
                     else "variant")
    stats["ratio_to_floor"] = _ratio(judged, stats["noise_floor"])
    stats["float64_max_rel"] = float64_max_rel
    return _judge_float32(stats, "float32", judged, multiple, fp64_max_rel)


def check_float32_events(torch32: np.ndarray, paddle32: np.ndarray, ref_torch: np.ndarray, ref_paddle: np.ndarray,
                         torch64: np.ndarray, paddle64: np.ndarray, events: dict[str, int],
                         multiple: float = NOISE_MULTIPLE, fp64_max_rel: float = FP64_MAX_REL,
                         torch_variants: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> dict:
    """The float32 rule where discrete decisions flipped (module docstring). ref_torch / ref_paddle: the
    float64 pass replayed on each float32 run's decisions; events: {site: count} of flipped decisions,
    recorded in the stats; torch_variants: (float32 value, its own replay) pairs of torch's other kernels."""
    t32, p32, ref_t, ref_p = (_f64(a) for a in (torch32, paddle32, ref_torch, ref_paddle))
    stats = diff_stats(t32, p32)
    if "shape_mismatch" in stats or "nonfinite_mismatch" in stats:
        stats.update(rule="float32-events", passed=False, ratio=float("inf"))
        return stats
    scale = scale_of(ref_t)
    if scale > 0 and np.isfinite(stats["max_abs"]):
        stats["max_rel"] = stats["max_abs"] / scale
    residual = max_abs_diff(t32 - p32, ref_t - ref_p)
    stats.update(_floor_fields(max_abs_diff(t32, ref_t), [max_abs_diff(v, r) for v, r in torch_variants],
                               max_abs_diff(p32, ref_p), scale, multiple))
    stats.update(residual_abs=residual, ratio_to_floor=_ratio(residual, stats["noise_floor"]),
                 events={k: int(v) for k, v in events.items()},
                 float64_max_rel=diff_stats(torch64, paddle64)["max_rel"])
    return _judge_float32(stats, "float32-events", residual, multiple, fp64_max_rel)


def _judge_float32(stats, rule, judged_abs, multiple, fp64_max_rel):
    ratio = max(_ratio(judged_abs, multiple * stats["noise_floor"]), _ratio(stats["float64_max_rel"], fp64_max_rel))
    stats.update(rule=rule, ratio=ratio, passed=bool(judged_abs <= multiple * stats["noise_floor"]
                                                     and stats["float64_max_rel"] <= fp64_max_rel
                                                     and np.isfinite(judged_abs)))
    return stats


def check_exact(reference: np.ndarray, other: np.ndarray) -> dict:
    """For integer outputs (labels, counts, bin indices): equality, reported with the same fields."""
    stats = diff_stats(reference, other)
    stats.update(rule="exact", ratio=0.0 if stats["max_abs"] == 0 else float("inf"))
    stats["passed"] = bool(stats["max_abs"] == 0)
    return stats


def check_exact_events(reference: np.ndarray, other: np.ndarray, moved: int, unexplained: int,
                       event: str = "moved") -> dict:
    """Integer decisions that float32 rounding may flip (GHM bins, selected detections): every differing element
    must be explained as an event (e.g. a value within a few ulps of a bin edge); event names the count."""
    stats = check_exact(reference, other)
    stats.update(rule="exact-events", events={event: int(moved)}, unexplained=int(unexplained),
                 ratio=0.0 if unexplained == 0 else float("inf"), passed=unexplained == 0)
    return stats


def check_metric(reference: np.ndarray, other: np.ndarray, dtype: str) -> dict:
    stats = diff_stats(reference, other)
    limit = METRIC_MAX_ABS[dtype]
    stats.update(rule="metric", tolerance_abs=limit, ratio=_ratio(stats["max_abs"], limit),
                 passed=bool(stats["max_abs"] <= limit))
    return stats


def reported(reference: np.ndarray, other: np.ndarray) -> dict:
    """A key shown for information, not judged."""
    stats = diff_stats(reference, other)
    stats.update(rule="reported", ratio=0.0, passed=True)
    return stats


def judge_on_float64_twins(stats: dict, fp64_max_rel: float = FP64_TRAIN_MAX_REL) -> dict:
    """A float32 key judged on its float64 twins' agreement alone (train_diff's later steps)."""
    stats.update(rule="float64-twins", judged_on="float64 twins (float32 difference reported)",
                 ratio=_ratio(stats["float64_max_rel"], fp64_max_rel),
                 passed=bool(stats["float64_max_rel"] <= fp64_max_rel))
    return stats


def rule_text(dtype: str, fp64_max_rel: float | None = None) -> str:
    """The verdict rule in words; fp64_max_rel: the float64 limit the check applied (default FP64_MAX_REL)."""
    fp64 = FP64_MAX_REL if fp64_max_rel is None else fp64_max_rel
    if dtype == "float64":
        return f"float64: max_rel <= {fp64:g} for every key"
    return (f"float32: max_abs <= {NOISE_MULTIPLE:g} x max(min(envelope_torch, noise_paddle), "
            f"{ULP_FLOOR:.3g} x max|ref|), noise = a framework's float32-vs-float64 error, envelope_torch "
            f"= torch's noise over its default and its other convolution backend; where float32 flipped discrete "
            f"decisions (rule float32-events) the residual after the float64 replay of each run's own decisions "
            f"is judged; the float64 runs within max_rel {fp64:g} (align/py)")


def judge_after_first_step(results: dict[str, dict], fp64_max_rel: float = FP64_TRAIN_MAX_REL,
                           first_prefix: str = "step000.") -> dict[str, dict]:
    """train_diff's float32 rule for the steps after the first: passed iff the float64 twins agree (their
    float32 difference is reported). From the first update on, each float32 trajectory carries its own
    amplified rounding, so the smaller noise stops being a bound (align/train_align.py)."""
    for key, st in results.items():
        if not key.startswith(first_prefix) and "float64_max_rel" in st:
            judge_on_float64_twins(st, fp64_max_rel)
    return results


def limits_for(level: str) -> dict[str, float]:
    """The default limits of a tool level ('train' keeps its curves to FP64_TRAIN_MAX_REL)."""
    return {"float64_max_rel": FP64_TRAIN_MAX_REL if level == "train" else FP64_MAX_REL,
            "noise_multiple": NOISE_MULTIPLE}


def recheck(stats: dict, fp64_max_rel: float = FP64_MAX_REL, multiple: float = NOISE_MULTIPLE,
            metric_max_abs: float | None = None) -> str | None:
    """Re-derive a key's verdict from its recorded numbers and rule (the gate does not take a tool's word).
    Returns None when the numbers satisfy the rule, else the reason."""
    def num(name):
        value = stats.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{name} is not a number: {value!r}")
        return float(value)
    try:
        rule = stats.get("rule")
        if not stats.get("passed"):
            return "failed"
        if rule == "float64":
            return None if num("max_rel") <= fp64_max_rel else f"max_rel {num('max_rel'):.3g} > {fp64_max_rel:g}"
        if rule == "exact":
            return None if num("max_abs") == 0 else "integer values differ"
        if rule == "exact-events":
            return None if num("unexplained") == 0 else "unexplained integer differences"
        if rule in ("float32", "float32-events"):
            judged = num("residual_abs") if rule == "float32-events" else num("max_abs")
            if rule == "float32" and "max_abs_torch_variant" in stats:     # Paddle vs the nearest torch run
                judged = min(judged, num("max_abs_torch_variant"))
            if judged > multiple * num("noise_floor"):
                return f"{judged:.3g} > {multiple:g} x floor {num('noise_floor'):.3g}"
            return None if num("float64_max_rel") <= fp64_max_rel else "float64 twins disagree"
        if rule == "metric":
            limit = num("tolerance_abs") if metric_max_abs is None else metric_max_abs
            return None if num("max_abs") <= limit else f"metric differs by {num('max_abs'):.3g} > {limit:g}"
        if rule == "reported":
            return None
        if rule == "float64-twins":
            return None if num("float64_max_rel") <= fp64_max_rel else "float64 twins disagree"
        if rule == "analytically-zero":     # both sides' largest value against the module's other gradients
            return None if num("max_rel") <= fp64_max_rel else f"not zero: {num('max_rel'):.3g} > {fp64_max_rel:g}"
        return f"unknown rule {rule!r}"
    except ValueError as e:
        return str(e)


def worst_passed_ratio(results: dict[str, dict]) -> tuple[str, float]:
    """(key, ratio) of the passed key that used most of its tolerance; ("", 0.0) if none passed."""
    rows = [(k, v.get("ratio", 0.0)) for k, v in results.items() if v.get("passed")]
    return max(rows, key=lambda kv: kv[1]) if rows else ("", 0.0)


def check_float64_or_exact(reference: np.ndarray, other: np.ndarray, fp64_max_rel: float = FP64_MAX_REL) -> dict:
    """The float64 rule for floating tensors, equality for integer and boolean ones."""
    if np.issubdtype(np.asarray(reference).dtype, np.floating):
        return check_float64(reference, other, fp64_max_rel)
    return check_exact(reference, other)


def compare_runs(dtype: str, torch_run: dict[str, np.ndarray], paddle_run: dict[str, np.ndarray],
                 torch_run64: dict[str, np.ndarray] | None = None, paddle_run64: dict[str, np.ndarray] | None = None,
                 fp64_max_rel: float = FP64_MAX_REL,
                 torch_variants: Sequence[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = ()
                 ) -> dict[str, dict]:
    """Compare two {key: array} dicts over their common keys, in torch_run's order.

    Integer and boolean arrays must be equal. For dtype 'float32' the float64 runs of both frameworks
    (same weights, same inputs) supply the noise floor, and torch_variants ((run32, run64) pairs of
    {key: array}: torch's float32 runs with its other kernels and their float64 counterparts) widen
    torch's side of it. fp64_max_rel: the float64 limit (training uses FP64_TRAIN_MAX_REL).
    """
    check_dtype(dtype)
    if dtype == "float32" and (torch_run64 is None or paddle_run64 is None):
        raise ValueError("float32 comparison needs the float64 runs of both frameworks for the noise floor")
    results = {}
    for key, t in torch_run.items():
        if key not in paddle_run:
            continue
        t, p = np.asarray(t), np.asarray(paddle_run[key])
        if dtype == "float64" or not np.issubdtype(t.dtype, np.floating):
            results[key] = check_float64_or_exact(t, p, fp64_max_rel)
        else:
            variants = [(v32[key], v64[key]) for v32, v64 in torch_variants if key in v32 and key in v64]
            results[key] = check_float32(t, p, torch_run64[key], paddle_run64[key], fp64_max_rel=fp64_max_rel,
                                         torch_variants=variants)
    return results
