"""Libra R-CNN speed: the IoU-balanced R-CNN sampling and the RPN target assignment, torch and Paddle twins
(vectorised), against a straightforward Python loop of the same definition (../shared/specs/libra_rcnn.md B.4, B.5).

    python benchmarks/bench_libra.py             # 2000 proposals / anchors, 50 GTs; checks the targets
    python benchmarks/bench_libra.py --quick     # 900 proposals / anchors, 10 GTs: a smoke test
    python benchmarks/bench_libra.py --forward   # also times `python -m align forward --model libra_rcnn`, both dtypes

Cases, per framework, float64, one image:
- R-CNN sampling: MaxIoUAssigner(0.5, 0.5, 0.5, no low-quality matching) on the proposals, the GTs prepended as
  proposals (add_gt_as_proposals: gt_inds 1..G, max_overlaps 1.0), then CombinedSampler(512, 0.25) =
  InstanceBalancedPos + IoUBalancedNeg (twin_common/samplers.py), as the two-stage criterion runs them;
- RPN targets: RPNHead.assign (MaxIoUAssigner(0.7, 0.3, 0.3, low-quality matching)) on the valid anchors (two levels,
  a few anchors invalid), RandomSampler(256, 0.5, neg_pos_ub=5), RPNHead.get_targets.
The loop, framework-free: the MaxIoU assignment written as one reads B.5.1 (an IoU per (GT, prior) pair in Python
floats, the best GT of each prior, thresholds, then the low-quality pass GT by GT), the prepended GTs as Python
lists, the loop sampler oracle align/numpy_ref/samplers.py, and the RPN targets anchor by anchor (labels, weights,
DeltaXYWH encode in Python floats). Before timing, each twin is checked against the loop on the inputs it is timed
on: equal gt_inds and max_overlaps, the same sampled sets on a first (floor_thr -1) and a second call (floor_thr 0)
of one sampler instance, the same RPN targets (labels equal, weights and deltas within 1e-12); the timed calls run
in the steady state (floor_thr 0). Inputs: seeded GTs of 16-200 px in an 800 x 1333 image; priors a mix of jittered
copies of the GTs and random boxes, so that there are positives, IoU negatives and zero-IoU negatives; one GT
matched by the RPN's low-quality pass alone, on a tie of two anchors (at the default seed).

Each timed call draws from np.random.default_rng(seed); the contenders take turns and each keeps its median of
--repeats. One CPU thread by default (--threads), as in bench_assigners.py. Target: each twin >= 5x the loop. Exit
status 1 when a target is missed (not checked with --quick) or a --forward run errors (exit 2 or a crash; exit 1,
the alignment check's own verdict, is reported, not counted: the gate judges alignment, this file speed).
"""
import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from align.numpy_ref import samplers as loop_sampler  # noqa: E402
from align.runtime import configure_frameworks  # noqa: E402
from benchmarks.targets import verdict, wall_times  # noqa: E402
from twin_common.samplers import CombinedSampler, RandomSampler, add_gt_as_proposals  # noqa: E402

TARGET = 5.0
FULL = {"priors": 2000, "gts": 50}
QUICK = {"priors": 900, "gts": 10}          # > 128 R-CNN positives, so the quick run draws them too
IMAGE = (800, 1333)                         # (h, w)
RCNN_ASSIGN = (0.5, 0.5, 0.5, False)        # pos_iou_thr, neg_iou_thr, min_pos_iou, low_quality
RPN_ASSIGN = (0.7, 0.3, 0.3, True)
IOU_EPS = 1e-6                              # mmdet BboxOverlaps2D: the union clamped >= eps
TOL = 1e-12
ASSIGN_KEYS = ("pos_iou_thr", "neg_iou_thr", "min_pos_iou", "low_quality")


# -------------------------------------------------------------------------------- the loop, Python floats
def loop_iou(g, p, eps=IOU_EPS):
    """IoU of a GT and a prior, x1y1x2y2 Python floats: no +1, sides clipped at 0, union clamped >= eps."""
    area_g = (g[2] - g[0]) * (g[3] - g[1])
    area_p = (p[2] - p[0]) * (p[3] - p[1])
    iw = max(min(g[2], p[2]) - max(g[0], p[0]), 0.0)
    ih = max(min(g[3], p[3]) - max(g[1], p[1]), 0.0)
    inter = iw * ih
    return inter / max(area_g + area_p - inter, eps)


def loop_assign(priors, gts, pos_iou_thr, neg_iou_thr, min_pos_iou, low_quality):
    """B.5.1 MaxIoU assignment: (gt_inds, max_overlaps) lists, gt_inds 0 negative, -1 ignored, k > 0 gt k - 1."""
    if not gts:
        return [0] * len(priors), [0.0] * len(priors)
    overlaps = [[loop_iou(g, p) for p in priors] for g in gts]
    gt_inds, max_overlaps = [], []
    for j in range(len(priors)):
        best, arg = overlaps[0][j], 0
        for i in range(1, len(gts)):
            if overlaps[i][j] > best:           # the first GT reaching the maximum
                best, arg = overlaps[i][j], i
        if best >= pos_iou_thr:
            gt_inds.append(arg + 1)
        elif 0 <= best < neg_iou_thr:
            gt_inds.append(0)
        else:
            gt_inds.append(-1)
        max_overlaps.append(best)
    if low_quality:
        for i in range(len(gts)):               # in GT order: later GTs overwrite earlier ones
            gt_max = max(overlaps[i])
            if gt_max >= min_pos_iou:
                for j in range(len(priors)):
                    if overlaps[i][j] == gt_max:
                        gt_inds[j] = i + 1
    return gt_inds, max_overlaps


def loop_encode(a, g, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0)):
    """DeltaXYWH of one anchor to one GT (B.5.9), the RPN's means 0 and stds 1."""
    pw, ph = a[2] - a[0], a[3] - a[1]
    px, py = a[0] + 0.5 * pw, a[1] + 0.5 * ph
    gw, gh = g[2] - g[0], g[3] - g[1]
    gx, gy = g[0] + 0.5 * gw, g[1] + 0.5 * gh
    deltas = ((gx - px) / pw, (gy - py) / ph, math.log(gw / pw), math.log(gh / ph))
    return [(d - m) / s for d, m, s in zip(deltas, means, stds)]


def loop_rcnn(proposals, gts, neg_sampler, rng):
    """Assignment on the proposals, the GTs prepended, the loop oracle's CombinedSampler(512, 0.25)."""
    gts = gts.tolist()
    gt_inds, max_overlaps = loop_assign(proposals.tolist(), gts, *RCNN_ASSIGN)
    gt_inds = list(range(1, len(gts) + 1)) + gt_inds
    max_overlaps = [1.0] * len(gts) + max_overlaps
    pos, neg = loop_sampler.combined_sampler(gt_inds, np.array(max_overlaps), neg_sampler, rng)
    return gt_inds, max_overlaps, pos, neg


def loop_rpn(anchors, valid, gts, rng):
    """Assignment on the valid anchors, the loop oracle's RandomSampler(256, 0.5, 5), targets anchor by anchor:
    (labels, label_weights, bbox_targets, bbox_weights, avg_factor, gt_inds, max_overlaps)."""
    anchors, valid, gts = anchors.tolist(), valid.tolist(), gts.tolist()
    to_all = [j for j, v in enumerate(valid) if v]
    gt_inds, max_overlaps = loop_assign([anchors[j] for j in to_all], gts, *RPN_ASSIGN)
    pos, neg = loop_sampler.random_sampler(gt_inds, 256, 0.5, 5, rng)
    num = len(anchors)
    labels, label_w = [1] * num, [0.0] * num                # 1: background
    targets, bbox_w = [[0.0] * 4 for _ in range(num)], [[0.0] * 4 for _ in range(num)]
    for i in pos:
        j = to_all[i]
        labels[j], label_w[j] = 0, 1.0
        targets[j] = loop_encode(anchors[j], gts[gt_inds[i] - 1])
        bbox_w[j] = [1.0] * 4
    for i in neg:
        label_w[to_all[i]] = 1.0
    return labels, label_w, targets, bbox_w, max(len(pos), 1) + max(len(neg), 1), gt_inds, max_overlaps


# ------------------------------------------------------------------------------------------------ inputs
def make_gts(rng, n):
    h, w = IMAGE
    wh = rng.uniform(16, 200, (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - wh)
    return np.concatenate([xy, xy + wh], axis=1)


def make_priors(rng, gts, n, jittered=0.35, sources=None):
    """Jittered copies of the GTs (or of gts[sources]; IoU spread over (0, 1)), then random boxes of 8-120 px,
    shuffled."""
    h, w = IMAGE
    k = int(n * jittered)
    g = (gts if sources is None else gts[sources])[rng.integers(0, len(gts) if sources is None else len(sources), k)]
    size = g[:, 2:] - g[:, :2]
    scale = rng.uniform(0.02, 0.5, (k, 1))
    centre = (g[:, :2] + g[:, 2:]) / 2 + rng.normal(0, 1, (k, 2)) * scale * size
    size = size * np.exp(rng.normal(0, 1, (k, 2)) * scale)
    near = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    wh = rng.uniform(8, 120, (n - k, 2))
    xy = rng.uniform(0, 1, (n - k, 2)) * (np.array([w, h]) - wh)
    boxes = np.concatenate([near, np.concatenate([xy, xy + wh], axis=1)])
    return boxes[rng.permutation(n)]


def make_inputs(sizes, seed):
    """The last GT, 200 x 160 px (random boxes reach IoU < 0.4 with it), gets no jittered anchors, nor do the GTs
    that overlap it; two identical anchors 1.5 times as wide (IoU 2/3 < 0.7) are its best: it has positives
    through the RPN's low-quality matching alone, on a tie."""
    rng = np.random.default_rng(seed)
    gts = make_gts(rng, sizes["gts"])
    gts[-1, :2] = np.minimum(gts[-1, :2], [IMAGE[1] - 200.0, IMAGE[0] - 160.0])
    gts[-1, 2:] = gts[-1, :2] + [200.0, 160.0]
    proposals = make_priors(rng, gts, sizes["priors"])
    apart = np.flatnonzero((np.minimum(gts[:, 2:], gts[-1, 2:]) <= np.maximum(gts[:, :2], gts[-1, :2])).any(1))
    anchors = make_priors(rng, gts, sizes["priors"], sources=apart)
    x1, y1, x2, y2 = gts[-1]
    anchors[:2] = [x1, y1, x1 + 1.5 * (x2 - x1), y2]
    valid = rng.random(sizes["priors"]) >= 0.05                 # a few invalid anchors
    valid[:2] = True
    levels = [sizes["priors"] * 3 // 4, sizes["priors"] - sizes["priors"] * 3 // 4]
    return {"gts": gts, "proposals": proposals, "anchors": anchors, "valid": valid, "levels": levels}


# ---------------------------------------------------------------------------------------------- adapters
class Torch:
    name = "torch"

    def __init__(self):
        import torch

        from torch_ref.assigners.max_iou import MaxIoUAssigner
        from torch_ref.heads.rpn_head import RPNHead
        self.torch, self.assigner, self.head = torch, MaxIoUAssigner, RPNHead()

    def tensor(self, x):
        return self.torch.tensor(x)

    def split(self, x, sizes):
        return list(self.torch.tensor(x).split(sizes))

    @staticmethod
    def numpy(x):
        return x.numpy()


class Paddle:
    name = "paddle"

    def __init__(self):
        import paddle

        from paddle_impl.assigners.max_iou import MaxIoUAssigner
        from paddle_impl.heads.rpn_head import RPNHead
        paddle.set_device("cpu")
        self.paddle, self.assigner, self.head = paddle, MaxIoUAssigner, RPNHead()

    def tensor(self, x):
        return self.paddle.to_tensor(x)

    def split(self, x, sizes):
        starts = np.cumsum([0] + sizes)
        return [self.paddle.to_tensor(x[a:b]) for a, b in zip(starts[:-1], starts[1:])]

    @staticmethod
    def numpy(x):
        return x.numpy()


def vectorised(fw, inputs, seed):
    """{case: fn() -> outputs} of one framework's twins, inputs converted once, outside the timing."""
    gts, proposals = fw.tensor(inputs["gts"]), fw.tensor(inputs["proposals"])
    anchors = fw.split(inputs["anchors"], inputs["levels"])
    valid = [fw.split(inputs["valid"], inputs["levels"])]
    gt_labels = np.zeros(len(inputs["gts"]), np.int64)
    rcnn_assigner = fw.assigner(**dict(zip(ASSIGN_KEYS, RCNN_ASSIGN)))
    rpn_assigner = fw.assigner(**dict(zip(ASSIGN_KEYS, RPN_ASSIGN)))
    rcnn_sampler, rpn_sampler = CombinedSampler(512, 0.25), RandomSampler(256, 0.5, neg_pos_ub=5)

    def rcnn():
        rng = np.random.default_rng(seed)
        a = rcnn_assigner.assign(proposals, gts)
        gt_inds, max_overlaps, _ = add_gt_as_proposals(fw.numpy(a.gt_inds), fw.numpy(a.max_overlaps), None,
                                                       gt_labels)
        pos, neg = rcnn_sampler.sample(gt_inds, max_overlaps, rng)
        return gt_inds, max_overlaps, pos, neg

    def rpn():
        rng = np.random.default_rng(seed)
        (a,) = fw.head.assign(anchors, valid, [gts], rpn_assigner)
        pos, neg = rpn_sampler.sample(fw.numpy(a.gt_inds), fw.numpy(a.max_overlaps), rng)
        return fw.head.get_targets(anchors, valid, [gts], [a.gt_inds], [pos], [neg]), a

    return {"R-CNN sampling": rcnn, "RPN targets": rpn}


def loops(inputs, seed):
    neg_sampler = loop_sampler.IoUBalancedNeg()             # its floor_thr is state, like the twins' instance

    def rcnn():
        return loop_rcnn(inputs["proposals"], inputs["gts"], neg_sampler, np.random.default_rng(seed))

    def rpn():
        return loop_rpn(inputs["anchors"], inputs["valid"], inputs["gts"], np.random.default_rng(seed))

    return {"R-CNN sampling": rcnn, "RPN targets": rpn}


# -------------------------------------------------------------------------------------------------- checks
def _same(label, what, ours, loop):
    ours, loop = np.asarray(ours), np.asarray(loop)
    if ours.shape != loop.shape or not np.array_equal(ours, loop):
        bad = int((ours != loop).sum()) if ours.shape == loop.shape else f"shape {ours.shape} vs {loop.shape}"
        raise AssertionError(f"{label}: {what} differ from the loop's ({bad})")


def _close(label, what, ours, loop):
    ours, loop = np.asarray(ours, np.float64), np.asarray(loop, np.float64)
    if ours.shape != loop.shape:
        raise AssertionError(f"{label}: {what} shape {ours.shape} vs the loop's {loop.shape}")
    err = float(np.abs(ours - loop).max()) if ours.size else 0.0
    if not np.allclose(ours, loop, rtol=TOL, atol=TOL):
        raise AssertionError(f"{label}: {what} differ from the loop's by {err:.2e} (tolerance {TOL:g})")
    return err


def check_rcnn(label, ours, loop):
    """gt_inds and sampled sets equal, max_overlaps within TOL; returns the max_overlaps error."""
    _same(label, "gt_inds", ours[0], loop[0])
    err = _close(label, "max_overlaps", ours[1], loop[1])
    _same(label, "positives", ours[2], loop[2])
    _same(label, "negatives", ours[3], loop[3])
    return err


def check_rpn(label, fw, ours, loop):
    """gt_inds, labels and avg_factor equal, max_overlaps, weights and deltas within TOL; returns the max error."""
    (labels, label_w, targets, bbox_w, avg), a = ours
    flat = [np.concatenate([fw.numpy(x) for x in t], axis=1)[0] for t in (labels, label_w, targets, bbox_w)]
    _same(label, "gt_inds", fw.numpy(a.gt_inds), loop[5])
    errs = [_close(label, "max_overlaps", fw.numpy(a.max_overlaps), loop[6])]
    _same(label, "labels", flat[0], loop[0])
    errs += [_close(label, name, flat[i], loop[i]) for i, name in
             ((1, "label_weights"), (2, "bbox_targets"), (3, "bbox_weights"))]
    if avg != loop[4]:
        raise AssertionError(f"{label}: avg_factor {avg} vs the loop's {loop[4]}")
    return max(errs)


def stats(inputs, loop_out):
    """What the cases exercise: the R-CNN assignment's mix and the sampled counts, the RPN's."""
    rcnn1, rcnn2, rpn = loop_out
    gi, mo = np.array(rcnn1[0]), np.array(rcnn1[1])
    g = len(inputs["gts"])
    rpn_gi = np.array(rpn[5])
    rpn_pos = sum(1 for label in rpn[0] if label == 0)
    rpn_neg = int(sum(rpn[1])) - rpn_pos                   # sampled: label weight 1
    return (f"R-CNN: {len(gi)} priors ({g} GTs prepended): {int((gi > 0).sum())} positives, "
            f"{int(((gi == 0) & (mo > 0)).sum())} IoU negatives, {int(((gi == 0) & (mo == 0)).sum())} zero-IoU "
            f"negatives, {int((gi < 0).sum())} ignored; sampled pos/neg {len(rcnn1[2])}/{len(rcnn1[3])} (first "
            f"call), {len(rcnn2[2])}/{len(rcnn2[3])} (floor_thr 0)\n"
            f"RPN: {len(rpn_gi)} valid of {len(inputs['anchors'])} anchors in levels {inputs['levels']}: "
            f"{int((rpn_gi > 0).sum())} positives, {int((rpn_gi == 0).sum())} negatives, {int((rpn_gi < 0).sum())} "
            f"ignored; sampled pos/neg {rpn_pos}/{rpn_neg}")


# ------------------------------------------------------------------------------------------------- runner
def timed(fns, repeats):
    """{name: fn} -> {name: median wall time of `repeats` calls}, the calls taking turns."""
    return {name: statistics.median(t) for name, t in wall_times(fns, repeats)[0].items()}


def run(quick, repeats, seed=0):
    sizes = QUICK if quick else FULL
    inputs = make_inputs(sizes, seed)
    frameworks = [Torch(), Paddle()]
    loop = loops(inputs, seed + 1)
    contenders = {("loop", case): fn for case, fn in loop.items()}
    for fw in frameworks:
        contenders.update({(fw.name, case): fn for case, fn in vectorised(fw, inputs, seed + 1).items()})
    # checks, before timing: two R-CNN calls on each sampler instance (floor_thr -1, then 0), one RPN call
    loop_out = (loop["R-CNN sampling"](), loop["R-CNN sampling"](), loop["RPN targets"]())
    errors = {}
    for fw in frameworks:
        label = f"{fw.name} R-CNN sampling"
        fn = contenders[fw.name, "R-CNN sampling"]
        errors[fw.name, "R-CNN sampling"] = max(check_rcnn(f"{label} (first call)", fn(), loop_out[0]),
                                                check_rcnn(f"{label} (floor_thr 0)", fn(), loop_out[1]))
        errors[fw.name, "RPN targets"] = check_rpn(f"{fw.name} RPN targets", fw, contenders[fw.name, "RPN targets"](),
                                                   loop_out[2])
    times = timed(contenders, repeats)
    rows = [{"case": case, "framework": fw.name, "ours": times[fw.name, case], "loop": times["loop", case],
             "speedup": times["loop", case] / times[fw.name, case], "max_err": errors[fw.name, case]}
            for case in loop for fw in frameworks]
    return sizes, rows, stats(inputs, loop_out)


def render(sizes, rows, quick):
    lines = [f"{'case':<15} {'framework':<9} {'vectorised [ms]':>15} {'loop [ms]':>10} {'loop/vec':>9} "
             f"{'target':>7} {'max err':>9}  verdict"]
    missed = []
    for r in rows:
        judged = verdict(r["speedup"] >= TARGET, quick, missed, f"{r['case']} {r['framework']}")
        lines.append(f"{r['case']:<15} {r['framework']:<9} {1e3 * r['ours']:>15.2f} {1e3 * r['loop']:>10.1f} "
                     f"{r['speedup']:>8.1f}x {TARGET:>6.0f}x {r['max_err']:>9.1e}  {judged}")
    return "\n".join(lines), missed


def time_forward(dtypes=("float64", "float32"), input_shape=None):
    """Wall seconds of `python -m align forward --model libra_rcnn --dtype D` per dtype, each in a fresh process
    (imports, build and weight copy included): [(dtype, seconds, exit status, its verdict line)]. Exit 1 is the
    alignment check's verdict (judged by the gate, align/gate.py), not a failed run."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_libra_") as out:
        for dtype in dtypes:
            cmd = [sys.executable, "-m", "align", "forward", "--model", "libra_rcnn", "--dtype", dtype, "--out", out]
            if input_shape:
                cmd += ["--input-shape", input_shape]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            verdict_line = next((line.strip() for line in reversed(proc.stdout.splitlines())
                                 if line.startswith("forward_diff")), "")
            if proc.returncode not in (0, 1):
                print(f"align forward --dtype {dtype} exited {proc.returncode}:\n{proc.stdout[-2000:]}"
                      f"{proc.stderr[-2000:]}", file=sys.stderr)
            results.append((dtype, seconds, proc.returncode, verdict_line))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no speed targets (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender (median kept; "
                                                                  "default 9, 3 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    parser.add_argument("--forward", action="store_true",
                        help="also time `python -m align forward --model libra_rcnn` in float64 and float32")
    parser.add_argument("--forward-shape", default=None, help="N,3,H,W for --forward (default: the model's own)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    threads = configure_frameworks(args.threads)
    sizes, rows, counts = run(args.quick, repeats, args.seed)
    table, missed = render(sizes, rows, args.quick)
    print(f"CPU threads: {threads}; float64; {sizes['priors']} proposals / anchors, {sizes['gts']} GTs; median of "
          f"{repeats}; twins == loop checked (same gt_inds, sampled sets and labels; max_overlaps, weights and "
          f"deltas <= {TOL:g})")
    print(counts)
    print(table)
    if args.forward and args.quick:
        print("--forward: not run with --quick")
    if args.forward and not args.quick:
        print("")
        print("two-stage forward alignment (python -m align forward --model libra_rcnn), wall seconds:")
        for dtype, seconds, rc, outcome in time_forward(input_shape=args.forward_shape):
            print(f"  {dtype:<8} {seconds:>7.1f} s  exit {rc}  {outcome}")
            if rc not in (0, 1):
                missed.append(f"align forward {dtype} (exit {rc})")
    if missed:
        print("targets missed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
