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
import os
import threading
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


# Block-wise kernels: one pass over the inputs, a cache-sized float64 buffer instead of full-size temporaries
# (and instead of float64 copies of float32 inputs). Blocks follow the split points of NumPy's pairwise
# summation, so that every sum below equals, bit for bit, the one NumPy takes over the whole float64 array
# (tests/test_store.py checks it): sums, means, minima and maxima are those of the straightforward full-array
# code. Standard deviations come from the same pass (block_moments), within a few ulp of NumPy's two-pass std.
BLOCK = 1 << 16                    # elements (512 KB of float64): a block of two inputs and the buffer stay in L2
_SCRATCH = threading.local()
_NUMERIC = "biuf"                  # kinds the kernels take (bool, integers, floats); others: full-array code


def _scratch(n: int, slot: int = 0) -> np.ndarray:
    """A float64 buffer of n <= BLOCK elements, one per thread and slot, reused (fresh memory is slow to first
    touch)."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    buf = bufs.get(slot)
    if buf is None:
        buf = bufs[slot] = np.empty(BLOCK)
    return buf[:n]


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)           # a view when contiguous (a copy otherwise, as the full-array code made)


def _split(lo, hi):
    half = (hi - lo) // 2
    return lo + half - half % 8


def block_tree(n: int, leaf, combine, threads: int | None = None):
    """leaf(lo, hi) over blocks of range(n) of at most BLOCK elements, combined pairwise by combine(left,
    right) on the split points of NumPy's pairwise summation (n // 2 rounded down to a multiple of 8).

    Large inputs are cut into subtrees computed on `threads` threads (default compare_threads(); NumPy
    releases the GIL in its loops) and combined in the same tree, so the result does not depend on them."""
    def tree(lo, hi):
        if hi - lo <= BLOCK:
            return leaf(lo, hi)
        mid = _split(lo, hi)
        return combine(tree(lo, mid), tree(mid, hi))
    threads = compare_threads() if threads is None else threads
    if threads < 2 or n < 4 * BLOCK:
        return tree(0, n)

    def cut(lo, hi, depth):               # the top of the tree, down to about 2 subtrees per thread
        if depth == 0 or hi - lo <= BLOCK:
            return (lo, hi)
        mid = _split(lo, hi)
        return (cut(lo, mid, depth - 1), cut(mid, hi, depth - 1))
    top = cut(0, n, max(1, (2 * threads - 1).bit_length()))
    ranges = []

    def collect(node):
        if isinstance(node[0], tuple):
            collect(node[0])
            collect(node[1])
        else:
            ranges.append(node)
    collect(top)
    pool = _pool(threads)
    futures = {r: pool.submit(tree, *r) for r in ranges[1:]}
    done = {ranges[0]: tree(*ranges[0])}                  # this thread takes the first subtree
    done.update((r, f.result()) for r, f in futures.items())

    def join(node):
        if isinstance(node[0], tuple):
            return combine(join(node[0]), join(node[1]))
        return done[node]
    return join(top)


_POOLS: dict = {}


def _pool(threads: int):
    pool = _POOLS.get(threads)
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor
        pool = _POOLS[threads] = ThreadPoolExecutor(threads - 1, thread_name_prefix="align-compare")
    return pool


def compare_threads() -> int:
    """Threads the block-wise kernels use on large tensors: ALIGN_COMPARE_THREADS, default the CPUs (at most 8).
    The frameworks wait meanwhile (align.lockstep runs one thing at a time)."""
    value = os.environ.get("ALIGN_COMPARE_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, min(os.cpu_count() or 1, 8))


def block_moments(block: np.ndarray) -> tuple:
    """(sum, M2, n) of a float64 block, M2 the sum of squared deviations from the block's own mean (the sum is
    NumPy's pairwise one); combine_moments merges two (Chan, Golub and LeVeque's pairwise update), so the
    standard deviation takes the pass that reads the block for its sum instead of a second pass over the whole
    array (measured: a fifth less time for diff and statistics of two float64 arrays). The block may be
    _scratch(n) itself."""
    total = np.add.reduce(block)
    buf = _scratch(block.size)
    np.subtract(block, total / block.size, out=buf)
    np.multiply(buf, buf, out=buf)
    return total, np.add.reduce(buf), block.size


def combine_moments(x: tuple, y: tuple) -> tuple:
    (sa, ma, na), (sb, mb, nb) = x, y
    d = sb / nb - sa / na
    return sa + sb, ma + mb + d * d * (na * nb / (na + nb)), na + nb


def moments_stats(low, high, moments: tuple) -> np.ndarray:
    """align.store.tensor_stats' fields (mean, std, min, max, L2 norm, size) from a whole array's min, max and
    combined moments; the sum of squares is M2 + n mean^2 (both terms >= 0), the L2 norm without another pass
    (its last bits may differ from a direct sum of squares)."""
    total, m2, n = moments
    mean = total / n
    return np.array([mean, np.sqrt(m2 / n), low, high, np.sqrt(m2 + n * mean * mean), n])


def _absdiff(a, b, lo, hi):
    buf = _scratch(hi - lo)
    np.subtract(a[lo:hi], b[lo:hi], out=buf, dtype=np.float64)
    return np.abs(buf, out=buf)


def _finite_abs_max(block) -> float:
    """max |x| over the finite elements of a block (-inf when none)."""
    top, bottom = float(block.max()), float(block.min())
    if np.isfinite(top) and np.isfinite(bottom):
        return max(top, -bottom)
    block = np.asarray(block, dtype=np.float64)
    block = block[np.isfinite(block)]
    return _abs_max(block) if block.size else float("-inf")


def diff_stats(reference: np.ndarray, other: np.ndarray) -> dict:
    """max_abs, mean_abs and max_rel of `other` against `reference`, computed in float64.

    Non-finite values agree only where both sides have the same one at the same element; those elements
    are counted (`nonfinite`) and left out of the statistics. `compared` counts the elements compared: a
    non-empty tensor with none finite compared nothing and gets infinite differences (it fails every rule)."""
    ref, oth = np.asarray(reference), np.asarray(other)
    if ref.shape != oth.shape:
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "max_rel": float("inf"),
                "shape_mismatch": [list(ref.shape), list(oth.shape)]}
    if ref.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0, "compared": 0}
    if ref.dtype.kind not in _NUMERIC or oth.dtype.kind not in _NUMERIC:
        return _diff_stats_full(ref, oth)
    ref, oth = _flat(ref), _flat(oth)          # 1-d: a 0-d subtraction would give a scalar

    def leaf(lo, hi):                          # the common case in one pass: sum and max of |d|, max |ref|
        d = _absdiff(ref, oth, lo, hi)
        r = ref[lo:hi]
        return np.add.reduce(d), d.max(), float(r.max()), float(r.min())

    total, max_abs, top, bottom = block_tree(ref.size, leaf, lambda a, b: (a[0] + b[0], max(a[1], b[1]),
                                                                          max(a[2], b[2]), min(a[3], b[3])))
    if np.isfinite(total):                     # both sides finite everywhere
        return _stats_of(float(max_abs), float(total / ref.size), float(max(top, -bottom)), None, ref.size)
    return _diff_stats_full(ref, oth)


def _diff_stats_full(reference, other) -> dict:
    """diff_stats on whole float64 arrays (non-finite values, other dtypes)."""
    ref, oth = _f64(reference).reshape(-1), _f64(other).reshape(-1)
    d = np.subtract(ref, oth)
    np.abs(d, out=d)
    if np.isfinite(d.sum()):
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


def _add(a, b):
    return a + b


class Summaries:
    """Several same-shaped floating arrays read together (in blocks, align.compare.block_tree): the numbers
    diff_stats, max_abs_diff, scale_of and align.store.tensor_stats would give, bit for bit, for the pairs and
    arrays asked for, in one pass over them all where those functions take one pass each. Summaries.of() is
    None when they do not apply as they are (shapes differ, an empty or a non-floating array, a value that is
    not finite, a sum that overflows): ask those functions then."""

    def __init__(self, n, pairs, lows, highs, moments):
        self.n, self._pairs, self._lows, self._highs, self._moments = n, pairs, lows, highs, moments

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray], diffs: Sequence[tuple[str, str]] = (),
           maxes: Sequence[tuple[str, str]] = (), stats: Sequence[str] = ()) -> "Summaries | None":
        """diffs: (reference, other) pairs to take diff_stats of; maxes: pairs to take max_abs_diff of (every
        array must be in a pair: the finiteness check); stats: names to take tensor_stats of. scale_of is
        answered for the references of diffs and the names in stats."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        shapes = {v.shape for v in arrays.values()}
        if len(shapes) != 1 or any(v.dtype.kind != "f" or not v.size for v in arrays.values()):
            return None
        if {k for pair in (*diffs, *maxes) for k in pair} != set(arrays):
            return None
        flat = {k: _flat(v) for k, v in arrays.items()}
        names = list(flat)
        ranged = list(dict.fromkeys([*stats, *(a for a, _ in diffs)]))
        slots = {k: i + 1 for i, k in enumerate(names)}

        def as64(name, lo, hi):
            block = flat[name][lo:hi]
            if block.dtype == np.float64:
                return block
            buf = _scratch(hi - lo, slots[name])
            np.copyto(buf, block, casting="unsafe")
            return buf

        def first(lo, hi):
            blocks = {k: as64(k, lo, hi) for k in names}
            buf = _scratch(hi - lo)
            out = []
            for a, b in diffs:
                np.subtract(blocks[a], blocks[b], out=buf)
                np.abs(buf, out=buf)
                out += [np.add.reduce(buf), buf.max()]
            for a, b in maxes:
                np.subtract(blocks[a], blocks[b], out=buf)
                np.abs(buf, out=buf)
                out.append(buf.max())
            for k in ranged:
                out += [blocks[k].min(), blocks[k].max()]
            out += [block_moments(blocks[k]) for k in stats]
            return out
        ops = ([_add, max] * len(diffs) + [max] * len(maxes) + [min, max] * len(ranged)
               + [combine_moments] * len(stats))

        def combine(x, y):
            return [op(a, b) for op, a, b in zip(ops, x, y)]
        size = flat[names[0]].size
        with np.errstate(all="ignore"):
            got = iter(block_tree(size, first, combine))
        pairs = {pair: (next(got), next(got)) for pair in diffs}
        pairs.update({pair: (None, next(got)) for pair in maxes})
        if not all(np.isfinite(top) and (total is None or np.isfinite(total)) for total, top in pairs.values()):
            return None                    # a value not finite (or a sum overflowing): the full-array code decides
        lows, highs = {}, {}
        for k in ranged:
            lows[k], highs[k] = next(got), next(got)
        moments = {k: next(got) for k in stats}
        return cls(size, pairs, lows, highs, moments)

    def scale(self, name: str) -> float:
        """scale_of(arrays[name])."""
        return float(max(self._highs[name], -self._lows[name]))

    def diff(self, reference: str, other: str) -> dict:
        """diff_stats(arrays[reference], arrays[other])."""
        total, top = self._pairs[reference, other]
        return _stats_of(float(top), float(total / self.n), self.scale(reference), None, self.n)

    def max_abs(self, a: str, b: str) -> float:
        """max_abs_diff(arrays[a], arrays[b]) (either order of a pair)."""
        return float(self._pairs[(a, b) if (a, b) in self._pairs else (b, a)][1])  # diffs' too

    def stats(self, name: str) -> np.ndarray:
        """align.store.tensor_stats(arrays[name])."""
        return moments_stats(self._lows[name], self._highs[name], self._moments[name])


def judge_float64(stats: dict, max_rel: float = FP64_MAX_REL) -> dict:
    """The float64 rule on diff_stats' numbers (check_float64 from its parts)."""
    stats.update(rule="float64", tolerance_rel=max_rel, ratio=_ratio(stats["max_rel"], max_rel))
    stats["passed"] = bool(stats["max_rel"] <= max_rel)
    return stats


def check_float64(reference: np.ndarray, other: np.ndarray, max_rel: float = FP64_MAX_REL) -> dict:
    stats = diff_stats(reference, other)
    stats.update(rule="float64", tolerance_rel=max_rel, ratio=_ratio(stats["max_rel"], max_rel))
    stats["passed"] = bool(stats["max_rel"] <= max_rel)
    return stats


def max_abs_diff(a, b) -> float:
    """max |a - b| over the elements where it is finite (inf for differing shapes)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if a.dtype.kind not in _NUMERIC or b.dtype.kind not in _NUMERIC:
        a, b = _f64(a), _f64(b)
    a, b = _flat(a), _flat(b)

    def leaf(lo, hi):
        d = _absdiff(a, b, lo, hi)
        top = float(d.max())
        if np.isfinite(top):
            return top
        d = d[np.isfinite(d)]
        return float(d.max()) if d.size else float("-inf")
    top = block_tree(a.size, leaf, max)
    return top if top != float("-inf") else 0.0


def scale_of(ref) -> float:
    """max |ref| over its finite elements."""
    ref = np.asarray(ref)
    if not ref.size:
        return 0.0
    if ref.dtype.kind not in _NUMERIC:
        ref = _f64(ref)
    ref = _flat(ref)
    top = block_tree(ref.size, lambda lo, hi: _finite_abs_max(ref[lo:hi]), max)
    return top if top != float("-inf") else 0.0


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
