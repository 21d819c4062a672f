"""PP-YOLOE's ATSS and task-aligned assigners (../shared/specs/ppyoloe.md A.9, A.10): torch twin == Paddle twin
exactly on CPU (labels, masks and boxes; scores to 1e-12 / 1e-6), ties included; both == the float64 NumPy
reference (align/numpy_ref/ppyoloe_assign.py) where no topk tie can decide; both == PaddleDetection's own dense
formulation (its helpers, its order of operations, the native topk over whole rows) on tie-heavy integer boxes,
which checks the candidate-only shortcuts of the twins, tie fallbacks included.
"""
import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as TF

from align import assign_cases as cases
from align.assign_cases import pred_boxes
from align.numpy_ref.ppyoloe_assign import atss_assign, task_aligned_assign
from paddle_impl.assigners import assign_utils as pu
from paddle_impl.assigners.atss import ATSSAssigner as PATSS
from paddle_impl.assigners.task_aligned import TaskAlignedAssigner as PTAL
from torch_ref.assigners import assign_utils as tu
from torch_ref.assigners.atss import ATSSAssigner as TATSS
from torch_ref.assigners.task_aligned import TaskAlignedAssigner as TTAL

paddle.set_device("cpu")

HEIGHT, WIDTH = 96, 128                                      # strides 32, 16, 8: 12 + 48 + 192 anchors
C = 5                                                        # classes; bg_index = C unless a test says otherwise
TOL = {"float64": 1e-12, "float32": 1e-6}
KINDS = ["float", "overlap", "single", "tiny"]               # no topk tie can decide: comparable to the reference


def anchors(dtype="float64"):
    boxes, points, counts = cases.grid_anchors(HEIGHT, WIDTH)
    return boxes.astype(dtype), points.astype(dtype), counts


def gt_case(rng, kind, batch=3, n_max=7):
    """Padded GTs on the 96 x 128 image (align/assign_cases.py says what each kind is)."""
    return cases.gt_case(rng, kind, batch, n_max, WIDTH, HEIGHT, C)


def pred_scores(rng, batch, num, kind):
    return cases.pred_scores(rng, batch, num, kind, C)


def to_torch(arrays, dtype):
    return [torch.tensor(a) if a.dtype == np.int64 else torch.tensor(a.astype(dtype)) for a in arrays]


def to_paddle(arrays, dtype):
    return [paddle.to_tensor(a) if a.dtype == np.int64 else paddle.to_tensor(a.astype(dtype)) for a in arrays]


def run_atss(anchor_boxes, counts, labels, boxes, pad, pred, dtype, bg=C):
    t = TATSS(num_classes=C)(*to_torch([anchor_boxes], dtype), counts, *to_torch([labels, boxes, pad], dtype), bg,
                             None if pred is None else to_torch([pred], dtype)[0])
    p = PATSS(num_classes=C)(*to_paddle([anchor_boxes], dtype), counts, *to_paddle([labels, boxes, pad], dtype), bg,
                             None if pred is None else to_paddle([pred], dtype)[0])
    return [x.numpy() for x in t], [x.numpy() for x in p]


def run_tal(scores, pred, points, counts, labels, boxes, pad, dtype, bg=C):
    t = TTAL(num_classes=C)(*to_torch([scores, pred, points], dtype), counts, *to_torch([labels, boxes, pad], dtype),
                            bg)
    p = PTAL(num_classes=C)(*to_paddle([scores, pred, points], dtype), counts,
                            *to_paddle([labels, boxes, pad], dtype), bg)
    return [x.numpy() for x in t], [x.numpy() for x in p]


def assert_same(a, b, dtype, what=""):
    """(labels, bboxes, scores, mask_positive) of two implementations: exact but for the scores."""
    np.testing.assert_array_equal(a[0], b[0], err_msg=f"labels {what}")
    np.testing.assert_array_equal(a[3], b[3], err_msg=f"mask_positive {what}")
    np.testing.assert_array_equal(a[1], b[1], err_msg=f"bboxes {what}")
    np.testing.assert_allclose(a[2], b[2], rtol=0, atol=TOL[dtype], err_msg=f"scores {what}")


# ------------------------------------------- PaddleDetection's dense formulation, in each framework (the oracle)
def dense_atss_torch(anchor_boxes, counts, labels, boxes, pad, bg, pred, topk=9):
    batch, n, num = boxes.shape[0], boxes.shape[1], anchor_boxes.shape[0]
    ious = tu.iou_similarity(boxes.reshape(-1, 4), anchor_boxes).reshape(batch, -1, num)
    centers = tu.bbox_center(anchor_boxes)
    dist = (tu.bbox_center(boxes.reshape(-1, 4)).unsqueeze(1) - centers).norm(dim=-1).reshape(batch, -1, num)
    in_topk, idxs, start = [], [], 0
    for d in torch.split(dist, counts, dim=-1):
        idx = torch.topk(d, topk, dim=-1, largest=False).indices
        in_topk.append(TF.one_hot(idx, d.shape[-1]).sum(-2).to(boxes.dtype) * pad)
        idxs.append(idx + start)
        start += d.shape[-1]
    is_in_topk, idxs = torch.cat(in_topk, -1), torch.cat(idxs, -1)
    cand = ious * is_in_topk
    thr = torch.gather(cand.reshape(batch * n, -1), 1, idxs.reshape(batch * n, -1)).reshape(batch, n, -1)
    thr = thr.mean(-1, keepdim=True) + thr.std(-1, keepdim=True)
    is_in_topk = torch.where(cand > thr, is_in_topk, torch.zeros_like(is_in_topk))
    mask = is_in_topk * tu.check_points_inside_bboxes(centers, boxes) * pad
    if mask.sum(-2).max() > 1:
        mask = torch.where(mask.sum(-2, keepdim=True) > 1, tu.compute_max_iou_anchor(ious), mask)
    return _dense_targets_torch(mask, labels, boxes, bg, pred, None)


def dense_tal_torch(scores, pred, points, labels, boxes, pad, bg, topk=13):
    batch, n = boxes.shape[:2]
    ious = tu.batch_iou_similarity(boxes, pred)
    cls = torch.gather(scores.transpose(1, 2), 1, labels.expand(-1, -1, scores.shape[1]))
    metric = cls.pow(1.0) * ious.pow(6.0)
    in_gts = tu.check_points_inside_bboxes(points, boxes)
    mask = tu.gather_topk_anchors(metric * in_gts, topk, topk_mask=pad) * in_gts * pad
    if mask.sum(-2).max() > 1:
        mask = torch.where(mask.sum(-2, keepdim=True) > 1, tu.compute_max_iou_anchor(ious), mask)
    return _dense_targets_torch(mask, labels, boxes, bg, None, (metric, ious))


def _dense_targets_torch(mask, labels, boxes, bg, pred, tal):
    index = mask.argmax(-2)
    out_labels = torch.gather(labels.squeeze(-1), 1, index)
    out_labels = torch.where(mask.sum(-2) > 0, out_labels, torch.full_like(out_labels, bg))
    out_boxes = torch.gather(boxes, 1, index.unsqueeze(-1).expand(-1, -1, 4))
    keep = torch.tensor([c for c in range(C + 1) if c != bg])
    scores = TF.one_hot(out_labels, C + 1).to(boxes.dtype).index_select(-1, keep)
    if pred is not None:
        scores = scores * (tu.batch_iou_similarity(boxes, pred) * mask).max(-2).values.unsqueeze(-1)
    if tal is not None:
        metric, ious = tal[0] * mask, tal[1]
        norm = metric / (metric.max(-1, keepdim=True).values + 1e-9) * (ious * mask).max(-1, keepdim=True).values
        scores = scores * norm.max(-2).values.unsqueeze(-1)
    return [x.numpy() for x in (out_labels, out_boxes, scores, mask)]


def dense_atss_paddle(anchor_boxes, counts, labels, boxes, pad, bg, pred, topk=9):
    batch, n, num = boxes.shape[0], boxes.shape[1], anchor_boxes.shape[0]
    ious = pu.iou_similarity(boxes.reshape([-1, 4]), anchor_boxes).reshape([batch, -1, num])
    centers = pu.bbox_center(anchor_boxes)
    dist = (pu.bbox_center(boxes.reshape([-1, 4])).unsqueeze(1) - centers.unsqueeze(0)).norm(2, axis=-1)
    dist = dist.reshape([batch, -1, num])
    in_topk, idxs, start = [], [], 0
    for d in paddle.split(dist, counts, axis=-1):
        idx = paddle.topk(d, topk, axis=-1, largest=False)[1]
        in_topk.append(PF.one_hot(idx, d.shape[-1]).sum(-2).astype(boxes.dtype) * pad)
        idxs.append(idx + start)
        start += d.shape[-1]
    is_in_topk, idxs = paddle.concat(in_topk, -1), paddle.concat(idxs, -1)
    cand = ious * is_in_topk
    thr = paddle.index_sample(cand.flatten(stop_axis=-2), idxs.flatten(stop_axis=-2)).reshape([batch, n, -1])
    thr = thr.mean(-1, keepdim=True) + thr.std(-1, keepdim=True)
    is_in_topk = paddle.where(cand > thr, is_in_topk, paddle.zeros_like(is_in_topk))
    mask = is_in_topk * pu.check_points_inside_bboxes(centers, boxes) * pad
    if mask.sum(-2).max() > 1:
        multiple = (mask.sum(-2).unsqueeze(1) > 1).tile([1, n, 1])
        mask = paddle.where(multiple, pu.compute_max_iou_anchor(ious), mask)
    return _dense_targets_paddle(mask, labels, boxes, bg, pred, None)


def dense_tal_paddle(scores, pred, points, labels, boxes, pad, bg, topk=13):
    batch, n = boxes.shape[:2]
    ious = pu.batch_iou_similarity(boxes, pred)
    batch_ind = paddle.arange(batch, dtype="int64").unsqueeze(-1).tile([1, n])
    cls = paddle.gather_nd(scores.transpose([0, 2, 1]), paddle.stack([batch_ind, labels.squeeze(-1)], -1))
    metric = cls.pow(1.0) * ious.pow(6.0)
    in_gts = pu.check_points_inside_bboxes(points, boxes)
    mask = pu.gather_topk_anchors(metric * in_gts, topk, topk_mask=pad) * in_gts * pad
    if mask.sum(-2).max() > 1:
        multiple = (mask.sum(-2).unsqueeze(1) > 1).tile([1, n, 1])
        mask = paddle.where(multiple, pu.compute_max_iou_anchor(ious), mask)
    return _dense_targets_paddle(mask, labels, boxes, bg, None, (metric, ious))


def _dense_targets_paddle(mask, labels, boxes, bg, pred, tal):
    batch, num = mask.shape[0], mask.shape[2]
    index = mask.argmax(-2)
    flat = index + (paddle.arange(batch, dtype="int64").unsqueeze(-1) * mask.shape[1])
    out_labels = paddle.gather(labels.flatten(), flat.flatten(), axis=0).reshape([batch, num])
    out_labels = paddle.where(mask.sum(-2) > 0, out_labels, paddle.full_like(out_labels, bg))
    out_boxes = paddle.gather(boxes.reshape([-1, 4]), flat.flatten(), axis=0).reshape([batch, num, 4])
    keep = paddle.to_tensor([c for c in range(C + 1) if c != bg])
    scores = paddle.index_select(PF.one_hot(out_labels, C + 1).astype(boxes.dtype), keep, axis=-1)
    if pred is not None:
        scores = scores * (pu.batch_iou_similarity(boxes, pred) * mask).max(-2).unsqueeze(-1)
    if tal is not None:
        metric, ious = tal[0] * mask, tal[1]
        norm = metric / (metric.max(-1, keepdim=True) + 1e-9) * (ious * mask).max(-1, keepdim=True)
        scores = scores * norm.max(-2).unsqueeze(-1)
    return [x.numpy() for x in (out_labels, out_boxes, scores, mask)]


# ------------------------------------------------------------------------------------------------- ATSS
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS + ["int"])
def test_atss_twins_agree(kind, dtype):
    anchor_boxes, points, counts = anchors()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        labels, boxes, pad = gt_case(rng, kind)
        pred = None if seed % 4 == 3 else pred_boxes(rng, points, len(boxes), kind)
        t, p = run_atss(anchor_boxes, counts, labels, boxes, pad, pred, dtype)
        assert t[0].dtype == p[0].dtype == np.int64 and t[2].dtype == p[2].dtype == np.dtype(dtype)
        assert_same(t, p, dtype, f"{kind} seed {seed}")
        assert (t[0] != C).any(), "no positive at all: the case tests nothing"


def test_atss_matches_numpy_reference_and_its_quirks_fire():
    anchor_boxes, points, counts = anchors()
    fired = {"multi_gt_anchors": 0, "winner_not_candidate": 0}
    for kind in KINDS:
        for seed in range(10):
            rng = np.random.default_rng(100 + seed)
            labels, boxes, pad = gt_case(rng, kind)
            pred = None if seed == 9 else pred_boxes(rng, points, len(boxes), kind)
            t, p = run_atss(anchor_boxes, counts, labels, boxes, pad, pred, "float64")
            *ref, info = atss_assign(anchor_boxes, counts, labels, boxes, pad, C, pred, num_classes=C,
                                     return_info=True)
            assert_same(t, ref, "float64", f"torch {kind} {seed}")
            assert_same(p, ref, "float64", f"paddle {kind} {seed}")
            for key in fired:
                fired[key] += info[key]
            if kind == "tiny":
                assert not t[3][0, 0].any(), "the GT without an anchor centre inside got a positive"
            if kind == "overlap":
                assert info["multi_gt_anchors"] > 0, "the multi-GT rule did not fire"
    assert fired["winner_not_candidate"] > 0      # the winning GT need not be one of the anchor's candidates


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_atss_equals_paddledetection_dense_form_on_ties(framework):
    """Integer boxes put many GT centres at equal distances from several anchors: the native topk's order
    decides, over the whole row; the twins' window shortcut hands those GTs to it."""
    anchor_boxes, points, counts = anchors()
    boundary_ties = 0
    for seed in range(16):
        rng = np.random.default_rng(200 + seed)
        kind = "int" if seed % 4 else "overlap"
        labels, boxes, pad = gt_case(rng, kind, batch=3, n_max=8)
        if kind == "overlap":
            boxes = np.round(boxes) * pad
        pred = pred_boxes(rng, points, len(boxes), "int")
        fast = run_atss(anchor_boxes, counts, labels, boxes, pad, pred, "float64")[framework == "paddle"]
        if framework == "torch":
            dense = dense_atss_torch(*to_torch([anchor_boxes], "float64"), counts,
                                     *to_torch([labels, boxes, pad], "float64"), C, *to_torch([pred], "float64"))
        else:
            dense = dense_atss_paddle(*to_paddle([anchor_boxes], "float64"), counts,
                                      *to_paddle([labels, boxes, pad], "float64"), C, *to_paddle([pred], "float64"))
        assert_same(fast, dense, "float64", f"{framework} seed {seed}")
        boundary_ties += count_boundary_ties(anchor_boxes, counts, boxes, pad)
    assert boundary_ties > 20, "too few GTs whose 9th and 10th nearest anchors tie: the ties were not tested"


def count_boundary_ties(anchor_boxes, counts, boxes, pad, topk=9):
    """Real GTs x levels where the topk-th and (topk + 1)-th smallest centre distances are equal."""
    centers = (anchor_boxes[:, :2] + anchor_boxes[:, 2:]) / 2
    gt_centers = (boxes[..., :2] + boxes[..., 2:]) / 2
    dist = np.linalg.norm(gt_centers[..., None, :] - centers, axis=-1)
    ties, start = 0, 0
    for count in counts:
        part = np.sort(dist[..., start:start + count], axis=-1)
        if count > topk:
            ties += int(((part[..., topk - 1] == part[..., topk]) & (pad[..., 0] > 0)).sum())
        start += count
    return ties


def test_atss_without_grid_anchors_and_other_bg_index():
    """Anchors shuffled within each level are no grid: the twins take the dense path. bg_index 2 of 5
    classes: the one-hot drops column 2 and label 2 means background."""
    anchor_boxes, points, counts = anchors()
    rng = np.random.default_rng(7)
    order = np.concatenate([start + rng.permutation(c) for start, c in zip(np.cumsum([0] + counts[:-1]), counts)])
    shuffled = anchor_boxes[order]
    for seed in range(6):
        rng = np.random.default_rng(300 + seed)
        labels, boxes, pad = gt_case(rng, ["float", "overlap"][seed % 2])
        pred = pred_boxes(rng, points[order], len(boxes), "float")
        for bg in (C, 2):
            t, p = run_atss(shuffled, counts, labels, boxes, pad, pred, "float64", bg)
            ref = atss_assign(shuffled, counts, labels, boxes, pad, bg, pred, num_classes=C)
            assert_same(t, ref, "float64", f"torch {seed} bg {bg}")
            assert_same(p, ref, "float64", f"paddle {seed} bg {bg}")
    labels, boxes, pad = gt_case(np.random.default_rng(9), "int")
    t, p = run_atss(shuffled, counts, labels, boxes, pad, None, "float32")
    assert_same(t, p, "float32", "int boxes, shuffled anchors")


# -------------------------------------------------------------------------------------------- task-aligned
def tal_inputs(rng, kind, points):
    labels, boxes, pad = gt_case(rng, "int" if kind == "tied" else kind)
    batch, num = len(boxes), len(points)
    return pred_scores(rng, batch, num, kind), pred_boxes(rng, points, batch, kind), labels, boxes, pad


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS + ["int", "tied"])
def test_task_aligned_twins_agree(kind, dtype):
    _, points, counts = anchors()
    for seed in range(12):
        scores, pred, labels, boxes, pad = tal_inputs(np.random.default_rng(seed), kind, points)
        t, p = run_tal(scores, pred, points, counts, labels, boxes, pad, dtype)
        assert t[0].dtype == p[0].dtype == np.int64 and t[2].dtype == p[2].dtype == np.dtype(dtype)
        assert_same(t, p, dtype, f"{kind} seed {seed}")
        assert (t[0] != C).any(), "no positive at all: the case tests nothing"


def test_task_aligned_matches_numpy_reference_and_its_quirks_fire():
    _, points, counts = anchors()
    fired = {"multi_gt_anchors": 0, "winner_not_candidate": 0}
    for kind in KINDS:
        for seed in range(10):
            scores, pred, labels, boxes, pad = tal_inputs(np.random.default_rng(400 + seed), kind, points)
            t, p = run_tal(scores, pred, points, counts, labels, boxes, pad, "float64")
            *ref, info = task_aligned_assign(scores, pred, points, counts, labels, boxes, pad, C, return_info=True)
            assert_same(t, ref, "float64", f"torch {kind} {seed}")
            assert_same(p, ref, "float64", f"paddle {kind} {seed}")
            for key in fired:
                fired[key] += info[key]
            if kind == "tiny":
                assert not t[3][0, 0].any(), "the GT without an anchor point inside got a positive"
            if kind == "overlap":
                assert info["multi_gt_anchors"] > 0, "the multi-GT rule did not fire"
    assert fired["winner_not_candidate"] > 0


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_task_aligned_equals_paddledetection_dense_form_on_ties(framework):
    """Quantised scores and integer boxes tie metrics, and predictions that miss their GT give inside anchors of
    metric 0, which topk's tie rule may make positive: the twins hand such GTs to the native topk."""
    _, points, counts = anchors()
    tie_rows = None
    for seed in range(16):
        kind = ("int", "tied")[seed % 2]
        scores, pred, labels, boxes, pad = tal_inputs(np.random.default_rng(500 + seed), kind, points)
        fast = run_tal(scores, pred, points, counts, labels, boxes, pad, "float64")[framework == "paddle"]
        if framework == "torch":
            dense = dense_tal_torch(*to_torch([scores, pred, points, labels, boxes, pad], "float64"), C)
        else:
            dense = dense_tal_paddle(*to_paddle([scores, pred, points, labels, boxes, pad], "float64"), C)
        assert_same(fast, dense, "float64", f"{framework} seed {seed}")
        rows = count_tie_rule_rows(scores, pred, points, labels, boxes, pad)
        tie_rows = [a + b for a, b in zip(tie_rows, rows)] if tie_rows else rows
    # GTs tied at the topk-th place among non-zero metrics, and GTs with too few non-zero metrics
    assert min(tie_rows) > 10, f"too few GTs whose selection depends on topk's tie rule: {tie_rows}"


def count_tie_rule_rows(scores, pred, points, labels, boxes, pad, topk=13):
    """(real GTs whose topk-th and (topk + 1)-th non-zero metric * inside tie, real GTs with fewer than topk
    non-zero metrics and an inside anchor of metric 0)."""
    t = [torch.tensor(a) for a in (scores, pred, points, labels, boxes, pad)]
    ious = tu.batch_iou_similarity(t[4], t[1])
    metric = torch.gather(t[0].transpose(1, 2), 1, t[3].expand(-1, -1, t[0].shape[1])) * ious.pow(6.0)
    inside = tu.check_points_inside_bboxes(t[2], t[4])
    values = (metric * inside).sort(dim=-1, descending=True).values
    nonzero = (values > 0).sum(-1)
    zero_inside = ((metric == 0) & (inside > 0)).sum(-1)
    real = t[5][..., 0] > 0
    return [int(((nonzero >= topk) & (values[..., topk - 1] == values[..., topk]) & real).sum()),
            int(((nonzero < topk) & (zero_inside > 0) & real).sum())]


def test_task_aligned_without_grid_anchors():
    _, points, counts = anchors()
    rng = np.random.default_rng(11)
    order = np.concatenate([start + rng.permutation(c) for start, c in zip(np.cumsum([0] + counts[:-1]), counts)])
    for seed in range(6):
        scores, pred, labels, boxes, pad = tal_inputs(np.random.default_rng(600 + seed), "float", points)
        t, p = run_tal(scores, pred[:, order], points[order], counts, labels, boxes, pad, "float64")
        ref = task_aligned_assign(scores, pred[:, order], points[order], counts, labels, boxes, pad, C)
        assert_same(t, ref, "float64", f"torch {seed}")
        assert_same(p, ref, "float64", f"paddle {seed}")
    scores, pred, labels, boxes, pad = tal_inputs(np.random.default_rng(13), "int", points)
    t, p = run_tal(scores, pred[:, order], points[order], counts, labels, boxes, pad, "float32")
    assert_same(t, p, "float32", "int boxes, shuffled anchors")


# ------------------------------------------------------------------------------------------ API contract
def test_no_gradient_and_input_checks():
    anchor_boxes, points, counts = anchors()
    labels, boxes, pad = gt_case(np.random.default_rng(0), "float")
    pred = torch.tensor(pred_boxes(np.random.default_rng(1), points, len(boxes), "float"), requires_grad=True)
    out = TATSS(num_classes=C)(torch.tensor(anchor_boxes), counts, torch.tensor(labels), torch.tensor(boxes),
                               torch.tensor(pad), C, pred)
    assert not any(x.requires_grad for x in out)
    ppred = paddle.to_tensor(pred.detach().numpy(), stop_gradient=False)
    out = PATSS(num_classes=C)(paddle.to_tensor(anchor_boxes), counts, paddle.to_tensor(labels),
                               paddle.to_tensor(boxes), paddle.to_tensor(pad), C, ppred)
    assert all(x.stop_gradient for x in out)
    args = [torch.tensor(anchor_boxes), counts, torch.tensor(labels), torch.tensor(boxes), torch.tensor(pad), C]
    with pytest.raises(ValueError, match="int64"):
        TATSS(num_classes=C)(*args[:2], args[2].int(), *args[3:])
    with pytest.raises(ValueError, match="n >= 1"):
        TATSS(num_classes=C)(*args[:2], args[2][:, :0], args[3][:, :0], args[4][:, :0], C)
    with pytest.raises(ValueError, match="topk"):
        TATSS(topk=13, num_classes=C)(*args)                 # the 12-anchor level has fewer than 13
    with pytest.raises(ValueError, match="float64"):
        TATSS(num_classes=C)(args[0].float(), *args[1:])
    pargs = [paddle.to_tensor(anchor_boxes), counts, paddle.to_tensor(labels), paddle.to_tensor(boxes),
             paddle.to_tensor(pad), C]
    with pytest.raises(ValueError, match="int64"):
        PATSS(num_classes=C)(*pargs[:2], pargs[2].astype("int32"), *pargs[3:])
    with pytest.raises(ValueError, match="bg_index"):
        PTAL(num_classes=C)(paddle.rand([3, len(points), C], dtype="float64"), paddle.to_tensor(pred.detach().numpy()),
                            paddle.to_tensor(points), counts, *pargs[2:5], C + 1)


def test_atss_window_edge_ties_go_to_the_native_topk():
    """A two-row level with uneven columns, far apart rows: a GT's 9th and 10th nearest columns tie while its 8
    nearer ones do not, so the 9-column window cannot see the tie; its edge check hands the GT to the native
    topk. Anchor boxes of different sizes make the choice between the two tied anchors matter."""
    # from x = 50: 9, 6, 5, 3, 2, 1, 4, 7, 8, 9, 10, ...; the native topk keeps x = 41, topk over the columns 59
    xs = np.array([41, 44, 45, 47, 48, 51, 54, 57, 58, 59, 60, 62, 63, 68, 74, 81, 84, 85, 88], float)
    row = np.stack(np.meshgrid(xs, [10.0, 70.0]), axis=-1).reshape(-1, 2)
    grid = np.stack(np.meshgrid([16.0, 48.0, 80.0], [16.0, 48.0, 80.0], indexing="ij")[::-1], -1).reshape(-1, 2)
    points = np.concatenate([row, grid])
    half = np.concatenate([12.0 + np.arange(len(row)) % 5 * 4, np.full(len(grid), 40.0)])[:, None]
    anchor_boxes = np.concatenate([points - half, points + half], axis=1)
    counts = [len(row), len(grid)]
    boxes = np.array([[[40.0, 0.0, 60.0, 20.0], [30.0, 2.0, 70.0, 18.0], [44.0, 4.0, 56.0, 16.0]]])
    labels, pad = np.array([[[1], [2], [3]]]), np.ones((1, 3, 1))
    assert count_boundary_ties(anchor_boxes, counts, boxes, pad) == 3
    for dtype in ("float64", "float32"):
        t, p = run_atss(anchor_boxes, counts, labels, boxes, pad, None, dtype)
        assert_same(t, p, dtype, "twins")
        dense_t = dense_atss_torch(*to_torch([anchor_boxes], dtype), counts, *to_torch([labels, boxes, pad], dtype),
                                   C, None)
        dense_p = dense_atss_paddle(*to_paddle([anchor_boxes], dtype), counts,
                                    *to_paddle([labels, boxes, pad], dtype), C, None)
        assert_same(t, dense_t, dtype, "torch vs dense")
        assert_same(p, dense_p, dtype, "paddle vs dense")
