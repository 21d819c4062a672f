"""MaxIoUAssigner (torch and Paddle) against the float64 NumPy loop of mmdetection, ties included."""
import numpy as np
import paddle
import pytest
import torch
import torchvision

from align.numpy_ref.max_iou import box_iou as np_box_iou
from align.numpy_ref.max_iou import max_iou_assign
from paddle_impl.assigners import MaxIoUAssigner as PMaxIoUAssigner
from paddle_impl.assigners import box_iou as p_box_iou
from torch_ref.assigners import MaxIoUAssigner as TMaxIoUAssigner

paddle.set_device("cpu")


def random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(2, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def run_both(anchors, gts, labels, dtype="float64", **kw):
    t = TMaxIoUAssigner(**kw).assign(torch.tensor(anchors, dtype=getattr(torch, dtype)),
                                     torch.tensor(gts, dtype=getattr(torch, dtype)).reshape(-1, 4),
                                     torch.tensor(labels, dtype=torch.int64))
    p = PMaxIoUAssigner(**kw).assign(paddle.to_tensor(np.asarray(anchors, dtype)),
                                     paddle.to_tensor(np.asarray(gts, dtype).reshape(-1, 4)),
                                     paddle.to_tensor(np.asarray(labels, np.int64)))
    return ([x.numpy() for x in t], [x.numpy() for x in p])


def assert_matches_reference(anchors, gts, labels, dtype="float64", **kw):
    (tg, tm, tl), (pg, pm, pl) = run_both(anchors, gts, labels, dtype, **kw)
    # the reference sees the same IoU values the frameworks compared (float32 rounding included)
    overlaps = torchvision.ops.box_iou(torch.tensor(gts, dtype=getattr(torch, dtype)).reshape(-1, 4),
                                       torch.tensor(anchors, dtype=getattr(torch, dtype))).numpy()
    rg, rm, rl = max_iou_assign(anchors, gts, labels, overlaps=overlaps if len(gts) else None, **kw)
    np.testing.assert_array_equal(tg, rg)
    np.testing.assert_array_equal(pg, rg)
    np.testing.assert_array_equal(tl, rl)
    np.testing.assert_array_equal(pl, rl)
    np.testing.assert_array_equal(tm, pm)
    np.testing.assert_allclose(tm, rm, rtol=0, atol=1e-12 if dtype == "float64" else 1e-6)
    return tg, tm, tl


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_box_iou_matches_torchvision_bitwise_and_numpy(dtype):
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 40).astype(dtype), random_boxes(rng, 300).astype(dtype)  # 12000 pairs
    t = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    p = p_box_iou(paddle.to_tensor(a), paddle.to_tensor(b)).numpy()
    # bit-equal: a 1-ulp IoU difference could flip a threshold or a tie between the frameworks
    np.testing.assert_array_equal(p, t)
    np.testing.assert_allclose(t, np_box_iou(a, b), rtol=1e-12 if dtype == "float64" else 1e-5, atol=1e-7)
    assert (t > 0).sum() > 1000  # enough overlapping pairs for the check to mean something


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scenes_match_reference(dtype, seed):
    rng = np.random.default_rng(seed)
    anchors, gts = random_boxes(rng, 400), random_boxes(rng, 7)
    labels = rng.integers(0, 5, 7)
    gt_inds, _, _ = assert_matches_reference(anchors, gts, labels, dtype)
    assert {-1, 0}.issubset(set(gt_inds.tolist())) and gt_inds.max() > 0  # all three outcomes present


def test_thresholds_and_labels_by_hand():
    gts = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float64)
    anchors = np.array([
        [0, 0, 10, 10],    # IoU 1 with gt0 -> positive, gt 1
        [0, 0, 10, 8.5],   # IoU 0.85 with gt0 -> positive
        [0, 0, 10, 4.5],   # IoU 0.45 -> ignored
        [0, 0, 10, 3],     # IoU 0.3 -> negative
        [50, 50, 60, 60],  # IoU 0 -> negative
        [20, 0, 30, 10],   # IoU 1 with gt1
    ])
    gt_inds, max_ov, labels = assert_matches_reference(anchors, gts, [3, 5])
    np.testing.assert_array_equal(gt_inds, [1, 1, -1, 0, 0, 2])
    np.testing.assert_array_equal(labels, [3, 3, -1, -1, -1, 5])
    np.testing.assert_allclose(max_ov, [1, 0.85, 0.45, 0.3, 0, 1], rtol=1e-12)


def test_low_quality_ties_and_override():
    gts = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0], [40, 40, 50, 50]])
    anchors = np.array([
        [0, 0, 10, 3],       # IoU 0.3 with gt0 and gt1 (identical gts): argmax must be the first (gt0)
        [40, 40, 50, 43],    # IoU 0.3 with gt2: gt2's max, shared by the next anchor (tie)
        [40, 47, 50, 50],    # same IoU 0.3 with gt2 -> both low-quality positives
        [0, 0, 10, 2],       # IoU 0.2, below neg_iou_thr -> negative
    ])
    # without low-quality matches: the 0.3 anchors are negatives
    gt_inds, _, _ = assert_matches_reference(anchors, gts, [0, 1, 2], low_quality=False)
    np.testing.assert_array_equal(gt_inds, [0, 0, 0, 0])
    # with them: gt0 and gt1 both reach their max at anchor 0, the later gt (gt1) wins as in the loop
    gt_inds, max_ov, labels = assert_matches_reference(anchors, gts, [0, 1, 2])
    np.testing.assert_array_equal(gt_inds, [2, 3, 3, 0])
    np.testing.assert_array_equal(labels, [1, 2, 2, -1])


def test_first_maximal_gt_is_the_argmax():
    gts = np.array([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    anchors = np.array([[0, 0, 10, 9.0], [0, 0, 10, 10]])
    gt_inds, _, _ = assert_matches_reference(anchors, gts, [4, 7], low_quality=False)
    np.testing.assert_array_equal(gt_inds, [1, 1])  # first of the two tied gts, not the last


def test_min_pos_iou_and_zero_overlap_gt_quirk():
    gts = np.array([[0, 0, 10, 10], [200, 200, 210, 210]])  # gt1 overlaps no anchor
    anchors = np.array([[0, 0, 10, 3], [0, 0, 10, 9], [50, 50, 60, 60]])
    # min_pos_iou = 0 (mmdetection RetinaNet): gt1's max IoU is 0, so every anchor with IoU 0 to it
    # (all of them) is claimed by gt1, overriding gt0 (later gt wins)
    gt_inds, _, _ = assert_matches_reference(anchors, gts, [0, 1])
    np.testing.assert_array_equal(gt_inds, [2, 2, 2])
    # min_pos_iou = 0.1 keeps gt1 out; anchor 1 is gt0's best
    gt_inds, _, _ = assert_matches_reference(anchors, gts, [0, 1], min_pos_iou=0.1)
    np.testing.assert_array_equal(gt_inds, [0, 1, 0])


def test_no_gts_all_negative_and_no_anchors():
    anchors = random_boxes(np.random.default_rng(3), 5)
    gt_inds, max_ov, labels = assert_matches_reference(anchors, np.zeros((0, 4)), np.zeros(0, np.int64))
    np.testing.assert_array_equal(gt_inds, np.zeros(5))
    np.testing.assert_array_equal(max_ov, np.zeros(5))
    np.testing.assert_array_equal(labels, -np.ones(5))
    (tg, tm, tl), (pg, pm, pl) = run_both(np.zeros((0, 4)), np.array([[0, 0, 1, 1.0]]), [0])
    assert tg.shape == pg.shape == tm.shape == pm.shape == tl.shape == pl.shape == (0,)


@pytest.mark.parametrize("make", [
    lambda A: A(pos_iou_thr=1.5),
    lambda A: A(neg_iou_thr=-0.1),
    lambda A: A(pos_iou_thr=0.3, neg_iou_thr=0.4),
    lambda A: A(min_pos_iou="0"),
])
def test_bad_thresholds_raise_in_both(make):
    for cls in (TMaxIoUAssigner, PMaxIoUAssigner):
        with pytest.raises(ValueError, match="iou"):
            make(cls)


def test_bad_inputs_raise_in_both():
    good = np.array([[0, 0, 1, 1.0]])
    for to, cls in ((torch.tensor, TMaxIoUAssigner), (paddle.to_tensor, PMaxIoUAssigner)):
        a = cls()
        with pytest.raises(ValueError, match="anchors"):
            a.assign(to(np.zeros((3, 5))), to(good))
        with pytest.raises(ValueError, match="gt_boxes"):
            a.assign(to(good), to(np.array([0, 0, 1, 1.0])))
        with pytest.raises(ValueError, match="gt_labels"):
            a.assign(to(good), to(good), to(np.array([0, 1])))
        with pytest.raises(ValueError, match="anchors"):
            a.assign(to(np.array([[0, 0, 1, 1]])), to(good))
