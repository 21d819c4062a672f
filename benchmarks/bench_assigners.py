"""Assigner speed: PP-YOLOE's vectorised ATSS and task-aligned assigners, torch and Paddle twins, against a
straightforward per-GT Python loop of the same definition (written here, in torch).

    python benchmarks/bench_assigners.py            # batch 8, 50 GTs, 640 x 640 (8400 anchors), checks targets
    python benchmarks/bench_assigners.py --quick    # batch 2, 6 GTs, 96 x 128 (252 anchors): a smoke test

The loop takes each image and each GT in turn, as one would write it from ../shared/specs/ppyoloe.md A.9 and
A.10: IoUs, distances, per-level topk, threshold and inside test for one GT over all anchors, the multi-GT rule
and the targets per image. Before timing, each twin is checked against the loop (labels and mask_positive
equal, boxes equal, scores to 1e-12) in float64 at the quick size, and in float32, the benchmark dtype, at the
benchmark size (labels, masks and boxes equal, scores to 1e-5). Targets: each twin >= 5x the loop, and the
Paddle twin within 3x of the torch twin. Everything runs on one CPU thread by default (--threads): Paddle's
CPU kernels use one (FLAGS_paddle_num_threads), and the gain measured is the vectorisation's, not a thread
pool's (torch's stalls for milliseconds per parallel op when another process holds a core). The contenders
take turns and each keeps its best of --repeats, so a slow spell of the machine hits them alike. Exit status
1 when a target is missed (not checked with --quick).
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.runtime import configure_frameworks  # noqa: E402
from benchmarks.targets import verdict, wall_times  # noqa: E402

LOOP_TARGET = 5.0            # vectorised twin vs the loop
PADDLE_TARGET = 3.0          # Paddle twin time / torch twin time
FULL = {"batch": 8, "gts": 50, "sizes": [(20, 20), (40, 40), (80, 80)], "classes": 80, "image": (640, 640)}
QUICK = {"batch": 2, "gts": 6, "sizes": [(3, 4), (6, 8), (12, 16)], "classes": 8, "image": (96, 128)}
STRIDES = (32, 16, 8)
FLOAT32_TOL = 1e-5


# ------------------------------------------------------------------------------------- the loops, in torch
def _iou_row(box, boxes, eps):
    """IoU of one x1y1x2y2 box with each of boxes (M, 4): no +1, sides clipped at 0, union + eps."""
    lt = torch.maximum(box[:2], boxes[:, :2])
    rb = torch.minimum(box[2:], boxes[:, 2:])
    wh = (rb - lt).clip(0)
    overlap = wh[:, 0] * wh[:, 1]
    area1 = (box[2] - box[0]).clip(0) * (box[3] - box[1]).clip(0)
    area2 = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    return overlap / (area1 + area2 - overlap + eps)


def _inside(points, box, eps=1e-9):
    return ((points[:, 0] - box[0] > eps) & (points[:, 1] - box[1] > eps)
            & (box[2] - points[:, 0] > eps) & (box[3] - points[:, 1] > eps))


def _assign(pos, ious, labels, boxes, bg_index):
    """One image: anchors of several GTs go to their GT of largest IoU; then labels and boxes."""
    multi = pos.sum(0) > 1
    if bool(multi.any()):
        best = ious.argmax(0)
        pos[:, multi] = 0
        pos[best[multi], multi.nonzero().squeeze(1)] = 1
    index = pos.argmax(0)
    return pos, torch.where(pos.sum(0) > 0, labels[index], bg_index), boxes[index]


def _one_hot(labels, num_classes, bg_index, dtype):
    keep = [c for c in range(num_classes + 1) if c != bg_index]
    return torch.nn.functional.one_hot(labels, num_classes + 1)[:, keep].to(dtype)


def atss_loop(anchor_bboxes, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask, bg_index, pred_bboxes,
              topk=9, num_classes=80):
    batch, n = gt_labels.shape[:2]
    centres = (anchor_bboxes[:, :2] + anchor_bboxes[:, 2:]) / 2
    starts = [sum(num_anchors_list[:i]) for i in range(len(num_anchors_list))]
    out = []
    for b in range(batch):
        ious = torch.zeros(n, len(anchor_bboxes), dtype=gt_bboxes.dtype)
        pos = torch.zeros_like(ious)
        for g in range(n):
            box = gt_bboxes[b, g]
            ious[g] = _iou_row(box, anchor_bboxes, 1e-10)
            if pad_gt_mask[b, g, 0] == 0:
                continue
            dist = torch.linalg.vector_norm((box[:2] + box[2:]) / 2 - centres, dim=-1)
            cand = torch.cat([torch.topk(dist[s:s + c], topk, largest=False).indices + s
                              for s, c in zip(starts, num_anchors_list)])
            values = ious[g, cand]
            keep = (values > values.mean() + values.std()) & _inside(centres[cand], box)
            pos[g, cand[keep]] = 1
        pos, labels, boxes = _assign(pos, ious, gt_labels[b, :, 0], gt_bboxes[b], bg_index)
        weight = torch.zeros(len(anchor_bboxes), dtype=gt_bboxes.dtype)
        for g in range(n):
            weight = torch.maximum(weight, _iou_row(gt_bboxes[b, g], pred_bboxes[b], 1e-9) * pos[g])
        out.append((labels, boxes, _one_hot(labels, num_classes, bg_index, gt_bboxes.dtype) * weight[:, None], pos))
    return tuple(torch.stack(t) for t in zip(*out))


def tal_loop(pred_scores, pred_bboxes, anchor_points, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask, bg_index,
             topk=13, alpha=1.0, beta=6.0, eps=1e-9):
    batch, n = gt_labels.shape[:2]
    num_classes = pred_scores.shape[-1]
    out = []
    for b in range(batch):
        ious = torch.zeros(n, len(anchor_points), dtype=gt_bboxes.dtype)
        metrics = torch.zeros_like(ious)
        pos = torch.zeros_like(ious)
        for g in range(n):
            box = gt_bboxes[b, g]
            ious[g] = _iou_row(box, pred_bboxes[b], 1e-9)
            metrics[g] = pred_scores[b, :, gt_labels[b, g, 0]].pow(alpha) * ious[g].pow(beta)
            if pad_gt_mask[b, g, 0] == 0:
                continue
            inside = _inside(anchor_points, box).to(metrics.dtype)
            cand = torch.topk(metrics[g] * inside, topk).indices
            pos[g, cand] = inside[cand]
        pos, labels, boxes = _assign(pos, ious, gt_labels[b, :, 0], gt_bboxes[b], bg_index)
        target = torch.zeros(len(anchor_points), dtype=gt_bboxes.dtype)
        for g in range(n):
            m = metrics[g] * pos[g]
            target = torch.maximum(target, m / (m.max() + eps) * (ious[g] * pos[g]).max())
        out.append((labels, boxes, _one_hot(labels, num_classes, bg_index, gt_bboxes.dtype) * target[:, None], pos))
    return tuple(torch.stack(t) for t in zip(*out))


# ------------------------------------------------------------------------------------------------ inputs
def make_inputs(rng, sizes, dtype):
    """Anchors of generate_anchors_for_grid_cell; GTs of 10-200 px (a tenth of them padding in all but the first
    image); predictions containing their anchor point, as PP-YOLOE's decode (non-negative distances) makes
    them; class probabilities. Everything as NumPy arrays in `dtype` (labels int64)."""
    from torch_ref.priors.grid_cells import generate_anchors_for_grid_cell
    boxes, points, counts, _ = generate_anchors_for_grid_cell(sizes["sizes"], STRIDES, dtype=torch.float64)
    boxes, points = boxes.numpy(), points.numpy()
    batch, n, height, width = sizes["batch"], sizes["gts"], *sizes["image"]
    scale = min(height, width) / 640
    xy = rng.uniform(0, [width - 10 * scale, height - 10 * scale], (batch, n, 2))
    wh = rng.uniform(10, 200, (batch, n, 2)) * scale
    gt = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=-1)
    pad = np.ones((batch, n, 1))
    pad[1:, n - max(n // 10, 1):] = 0
    gt *= pad
    labels = (rng.integers(0, sizes["classes"], (batch, n, 1)) * pad).astype(np.int64)
    pred = np.concatenate([points - rng.uniform(2, 60, (batch, len(points), 2)) * scale,
                           points + rng.uniform(2, 60, (batch, len(points), 2)) * scale], axis=-1)
    scores = rng.uniform(0.001, 1.0, (batch, len(points), sizes["classes"]))
    cast = [a.astype(dtype) for a in (boxes, points, gt, pad, pred, scores)]
    return dict(zip(["anchors", "points", "gt", "pad", "pred", "scores"], cast), labels=labels, counts=counts)


# ---------------------------------------------------------------------------------------------- adapters
class Torch:
    name = "torch"

    def __init__(self, classes):
        from torch_ref.assigners.atss import ATSSAssigner
        from torch_ref.assigners.task_aligned import TaskAlignedAssigner
        self.atss, self.tal = ATSSAssigner(num_classes=classes), TaskAlignedAssigner(num_classes=classes)

    @staticmethod
    def tensors(inputs):
        return {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


class Paddle:
    name = "paddle"

    def __init__(self, classes):
        import paddle

        from paddle_impl.assigners.atss import ATSSAssigner
        from paddle_impl.assigners.task_aligned import TaskAlignedAssigner
        paddle.set_device("cpu")
        self.paddle = paddle
        self.atss, self.tal = ATSSAssigner(num_classes=classes), TaskAlignedAssigner(num_classes=classes)

    def tensors(self, inputs):
        return {k: self.paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


def calls(fw, t, classes):
    """{assigner: fn() -> 4 outputs} of one framework's twins (fw) or of the loops (fw None) on tensors t."""
    if fw is None:
        return {"ATSS": lambda: atss_loop(t["anchors"], t["counts"], t["labels"], t["gt"], t["pad"], classes,
                                          t["pred"], num_classes=classes),
                "TAL": lambda: tal_loop(t["scores"], t["pred"], t["points"], t["counts"], t["labels"], t["gt"],
                                        t["pad"], classes)}
    return {"ATSS": lambda: fw.atss(t["anchors"], t["counts"], t["labels"], t["gt"], t["pad"], classes, t["pred"]),
            "TAL": lambda: fw.tal(t["scores"], t["pred"], t["points"], t["counts"], t["labels"], t["gt"], t["pad"],
                                  classes)}


def check_same(label, ours, loop, tol):
    """Labels, masks and boxes equal, scores to tol; raises AssertionError naming the case."""
    ours, loop = [np.asarray(x.numpy()) for x in ours], [np.asarray(x.numpy()) for x in loop]
    for i, name in ((0, "labels"), (3, "mask_positive"), (1, "bboxes")):
        bad = int((ours[i] != loop[i]).sum())
        assert bad == 0, f"{label}: {name} differ from the loop's in {bad} entries"
    err = float(np.abs(ours[2].astype(np.float64) - loop[2]).max())
    assert err <= tol, f"{label}: scores differ from the loop's by {err:.2e} > {tol:g}"
    return err


def timed(fns, repeats):
    """{name: fn} -> {name: best wall time of `repeats` calls}, the calls taking turns."""
    return {name: min(t) for name, t in wall_times(fns, repeats)[0].items()}


def run(quick, repeats, seed=0):
    sizes = QUICK if quick else FULL
    classes = sizes["classes"]
    frameworks = [Torch(classes), Paddle(classes)]
    # float64 equality first, at the quick size
    inputs = make_inputs(np.random.default_rng(seed + 1), QUICK, np.float64)
    loop = calls(None, Torch.tensors(inputs), QUICK["classes"])
    for fw in frameworks:
        fw_q = type(fw)(QUICK["classes"])
        ours = calls(fw_q, fw_q.tensors(inputs), QUICK["classes"])
        for name in ours:
            check_same(f"{name} {fw.name} float64", ours[name](), loop[name](), 1e-12)
    inputs = make_inputs(np.random.default_rng(seed), sizes, np.float32)
    loop = calls(None, Torch.tensors(inputs), classes)
    contenders = {(fw.name, name): fn for fw in frameworks
                  for name, fn in calls(fw, fw.tensors(inputs), classes).items()}
    contenders.update({("loop", name): fn for name, fn in loop.items()})
    results = {key: fn() for key, fn in contenders.items()}        # warm-up, and the results checked below
    errors = {key: check_same(f"{key[1]} {key[0]} float32", results[key], results["loop", key[1]], FLOAT32_TOL)
              for key in contenders if key[0] != "loop"}
    positives = {name: int((results["loop", name][0].numpy() != classes).sum()) for name in loop}
    times = timed(contenders, repeats)
    rows = []
    for name in loop:
        for fw in frameworks:
            rows.append({"assigner": name, "framework": fw.name, "ours": times[fw.name, name],
                         "loop": times["loop", name], "speedup": times["loop", name] / times[fw.name, name],
                         "max_err": errors[fw.name, name],
                         "paddle_ratio": times["paddle", name] / times["torch", name]})
    return sizes, rows, positives


def render(sizes, rows, positives, quick):
    h, w = sizes["image"]
    anchors = sum(a * b for a, b in sizes["sizes"])
    lines = [f"batch {sizes['batch']}, {sizes['gts']} GTs (padded in part), {h}x{w}: {anchors} anchors, "
             f"{sizes['classes']} classes; positives: " + ", ".join(f"{k} {v}" for k, v in positives.items()),
             f"{'assigner':<9} {'framework':<9} {'ours [ms]':>10} {'loop [ms]':>10} {'loop/ours':>10} {'target':>7} "
             f"{'scores err':>11}  verdict"]
    missed = []
    for r in rows:
        judged = verdict(r["speedup"] >= LOOP_TARGET, quick, missed, f"{r['assigner']} {r['framework']} vs loop")
        lines.append(f"{r['assigner']:<9} {r['framework']:<9} {1e3 * r['ours']:>10.1f} {1e3 * r['loop']:>10.1f} "
                     f"{r['speedup']:>9.1f}x {LOOP_TARGET:>6.0f}x {r['max_err']:>11.1e}  {judged}")
    lines.append("")
    lines.append(f"paddle / torch time ratio of the twins (target <= {PADDLE_TARGET:g}):")
    for r in rows[::2]:
        judged = verdict(r["paddle_ratio"] <= PADDLE_TARGET, quick, missed, f"{r['assigner']} paddle / torch")
        lines.append(f"  {r['assigner']:<6} {r['paddle_ratio']:.2f}  {judged}")
    return "\n".join(lines), missed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no speed targets (smoke test)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per contender (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    args = parser.parse_args(argv)
    threads = configure_frameworks(args.threads)
    sizes, rows, positives = run(args.quick, args.repeats, args.seed)
    table, missed = render(sizes, rows, positives, args.quick)
    print(f"CPU threads: {threads}; dtype float32; twins == loop checked (float64 scores <= 1e-12, "
          f"float32 <= {FLOAT32_TOL:g}; labels, masks and boxes equal)")
    print(table)
    if missed:
        print("speed targets missed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
