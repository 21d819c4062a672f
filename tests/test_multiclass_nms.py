"""PaddleDetection's multiclass_nms twins against Paddle's own multiclass_nms3 kernel and the NumPy loop reference:
the same rows, order and anchor indices, exactly, in float32 and float64 (thresholds and sort keys are float32
in the kernel)."""
import numpy as np
import paddle
import pytest
import torch
import torchvision.ops

import paddle_impl.ops.multiclass_nms as P
import torch_ref.ops.multiclass_nms as T
from align.numpy_ref.multiclass_nms import multiclass_nms as reference

DTYPES = ("float32", "float64")


def run_all(boxes, scores, **cfg):
    """-> (torch, paddle, reference) outputs as NumPy triples (detections, bbox_num, index)."""
    t = T.multiclass_nms(torch.tensor(boxes), torch.tensor(scores), **cfg)
    p = P.multiclass_nms(paddle.to_tensor(boxes), paddle.to_tensor(scores), **cfg)
    return [x.numpy() for x in t], [x.numpy() for x in p], reference(boxes, scores, **cfg)


def assert_same(boxes, scores, **cfg):
    """All three agree bit for bit, with the documented dtypes; returns the common result."""
    ours_t, ours_p, ref = run_all(boxes, scores, **cfg)
    for name, ours in (("torch", ours_t), ("paddle", ours_p)):
        for got, want, dtype in zip(ours, ref, (boxes.dtype, np.int32, np.int64)):
            assert got.dtype == dtype and want.dtype == dtype, (name, got.dtype, want.dtype)
            assert got.shape == want.shape, (name, got.shape, want.shape)
            assert np.array_equal(got, want), name
    det, num, index = ref
    assert det.shape == (num.sum(), 6) and index.shape == (num.sum(),)
    # each row is its anchor's box and its class's score for that anchor
    image = np.repeat(np.arange(len(num)), num)
    label = det[:, 0].astype(np.int64)
    assert np.array_equal(det[:, 2:], boxes[image, index])
    assert np.array_equal(det[:, 1], scores[image, label, index])
    return ref


def check_grouping(det, num):
    """Per image: labels ascending; within a class, scores non-increasing (not a global score sort)."""
    for rows in np.split(det, np.cumsum(num)[:-1]):
        assert np.all(np.diff(rows[:, 0]) >= 0)
        same = np.diff(rows[:, 0]) == 0
        assert np.all(np.diff(rows[:, 1].astype(np.float32))[same] <= 0)


def clustered(rng, b, c, n, clusters=30, quantize=None):
    """n boxes per image jittered around a few centres (heavy overlap) and PP-YOLOE-like sparse scores."""
    centre = np.take_along_axis(rng.random((b, clusters, 2)) * 400, rng.integers(0, clusters, (b, n))[..., None], 1)
    centre = centre + rng.normal(0, 8, (b, n, 2))
    half = (rng.random((b, n, 2)) * 60 + 20) / 2
    scores = 1 / (1 + np.exp(-rng.normal(-3, 2, (b, c, n))))
    if quantize:
        scores = np.round(scores * quantize) / quantize  # many exactly tied scores, within and across classes
    return np.concatenate([centre - half, centre + half], -1), scores


CASES = {  # (classes, anchors, quantize, config): every cut bites, see test_random_cases_match
    "ppyoloe_defaults": (80, 300, None, dict()),
    "small_top_ks": (80, 200, None, dict(nms_top_k=20, keep_top_k=50, nms_threshold=0.5)),
    "no_top_k": (5, 400, None, dict(score_threshold=0.2, nms_top_k=-1, keep_top_k=-1, nms_threshold=0.3)),
    "tied_scores": (3, 300, 20, dict(nms_top_k=30, keep_top_k=40, nms_threshold=0.6)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_random_cases_match(case, dtype):
    classes, anchors, quantize, cfg = CASES[case]
    boxes, scores = clustered(np.random.default_rng(len(case)), 2, classes, anchors, quantize=quantize)
    boxes, scores = boxes.astype(dtype), scores.astype(dtype)
    det, num, index = assert_same(boxes, scores, **cfg)
    check_grouping(det, num)
    full = dict(score_threshold=0.01, nms_top_k=1000, keep_top_k=300, nms_threshold=0.7) | cfg
    # the cuts bite: NMS suppresses, and nms_top_k / keep_top_k remove rows that survive without them
    candidates = (scores > np.float32(full["score_threshold"])).sum()
    no_keep = reference(boxes, scores, **(full | dict(keep_top_k=-1)))[1]
    no_cut = reference(boxes, scores, **(full | dict(keep_top_k=-1, nms_top_k=-1)))[1]
    assert no_cut.sum() < candidates
    if full["keep_top_k"] > -1:
        assert np.array_equal(num, np.minimum(no_keep, full["keep_top_k"])) and np.all(no_keep > num)
    if -1 < full["nms_top_k"] < anchors:
        assert np.all(no_cut != no_keep)


def test_float64_of_float32_inputs_gives_the_same_rows():
    """Away from the thresholds (no score at float32(0.01), no IoU within rounding of 0.7), both dtypes agree."""
    boxes, scores = clustered(np.random.default_rng(5), 2, 10, 100)
    boxes, scores = boxes.astype(np.float32), scores.astype(np.float32)
    det32, num32, idx32 = assert_same(boxes, scores)
    det64, num64, idx64 = assert_same(boxes.astype(np.float64), scores.astype(np.float64))
    assert np.array_equal(num32, num64) and np.array_equal(idx32, idx64)
    assert np.array_equal(det32.astype(np.float64), det64)


# ---------------------------------------------------------------- targeted cases
@pytest.mark.parametrize("dtype", DTYPES)
def test_iou_exactly_0p7(dtype):
    """IoU 70/100: float32(0.7) <= float32(0.7) keeps it; in float64 0.7 > float32(0.7) = 0.699999988 suppresses."""
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 7]]], dtype)
    scores = np.array([[[0.9, 0.8]]], dtype)
    det, num, index = assert_same(boxes, scores)
    assert index.tolist() == ([0, 1] if dtype == "float32" else [0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_score_threshold_is_float32(dtype):
    """score > float32(0.01) = 0.0099999998 (strict): 0.01 and 0.0100000001 are kept in float64 only, since in
    float32 both round to the threshold itself."""
    boxes = np.array([[[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11], [20, 20, 21, 21]]], dtype)
    scores = np.array([[[0.0100000001, 0.01, 0.00999999, 0.02]]], dtype)
    det, num, index = assert_same(boxes, scores)
    assert index.tolist() == ([3] if dtype == "float32" else [3, 0, 1])
    assert det[:, 1].tolist() == scores[0, 0, index].tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_tied_scores_keep_anchor_order(dtype):
    """std::stable_sort: equal scores stay in anchor order, within a class, under nms_top_k and under keep_top_k
    (where the lower class wins a tie)."""
    boxes = np.array([[[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11], [20, 20, 21, 21]]], dtype)
    scores = np.array([[[0.5, 0.3, 0.5, 0.5], [0.5, 0.6, 0.1, 0.5]]], dtype)
    assert assert_same(boxes, scores)[2].tolist() == [0, 2, 3, 1, 1, 0, 3, 2]
    assert assert_same(boxes, scores, nms_top_k=2)[2].tolist() == [0, 2, 1, 0]
    det, _, index = assert_same(boxes, scores, keep_top_k=3)
    assert det[:, 0].tolist() == [0, 0, 1] and index.tolist() == [0, 2, 1]


def test_float64_scores_are_sorted_as_float32():
    """Scores distinct in float64 but equal in float32 are a tie: anchor order, not the float64 order."""
    boxes = np.array([[[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11]]], np.float64)
    scores = np.array([[[0.5, 0.5 + 1e-12, 0.5 + 2e-12]]])
    assert assert_same(boxes, scores)[2].tolist() == [0, 1, 2]
    assert assert_same(boxes, scores, nms_top_k=1)[2].tolist() == [0]
    assert assert_same(boxes, scores, keep_top_k=1)[2].tolist() == [0]
    # and overlapping: the float32 tie makes anchor 0 the survivor, though anchor 1 scores higher in float64
    same = np.array([[[0, 0, 1, 1], [0, 0, 1, 1]]], np.float64)
    assert assert_same(same, scores[:, :, :2])[2].tolist() == [0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_touching_and_disjoint_boxes_have_iou_zero(dtype):
    """normalized=True (no +1): boxes sharing an edge or a corner have IoU 0, so even nms_threshold=0 keeps them;
    any overlap suppresses."""
    boxes = np.array([[[0, 0, 1, 1], [1, 0, 2, 1], [1, 1, 2, 2], [3, 3, 4, 4], [0.5, 0, 1.5, 1]]], dtype)
    scores = np.array([[[0.9, 0.8, 0.7, 0.6, 0.5]]], dtype)
    assert assert_same(boxes, scores, nms_threshold=0.0)[2].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_grouped_by_class_then_score(dtype):
    boxes = np.array([[[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11]]], dtype)
    scores = np.array([[[0.1, 0.2, 0.0], [0.0, 0.3, 0.05], [0.95, 0.9, 0.99]]], dtype)
    det, num, index = assert_same(boxes, scores)
    assert det[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 2] and index.tolist() == [1, 0, 1, 2, 2, 0, 1]
    check_grouping(det, num)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_output(dtype):
    boxes = np.tile(np.array([0, 0, 1, 1], dtype), (2, 3, 1))
    det, num, index = assert_same(boxes, np.zeros((2, 4, 3), dtype))
    assert det.shape == (0, 6) and num.tolist() == [0, 0] and index.shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_image_next_to_detections(dtype):
    """bbox_num splits the rows; index is per image (the kernel's is flat, b * L + anchor)."""
    boxes, scores = clustered(np.random.default_rng(7), 3, 4, 50)
    scores[1] = 0.0
    det, num, index = assert_same(boxes.astype(dtype), scores.astype(dtype))
    assert num[1] == 0 and num[0] > 0 and num[2] > 0 and index.max() < 50


@pytest.mark.parametrize("dtype", DTYPES)
def test_iou_of_raw_coordinates_at_class_79(dtype):
    """Pairs with IoU within rounding of 0.7 at class 79: the twin (one nms per class) decides as the kernel;
    batched_nms's class-offset trick shifts the coordinates and decides some pairs differently."""
    rng = np.random.default_rng(3)
    n = 100
    x, y = np.arange(n) * 200.0 + rng.random(n) * 50, rng.random(n) * 300
    w, h = rng.random(n) * 80 + 20, rng.random(n) * 80 + 20
    # inner box sharing three sides: IoU = h_inner / h, scattered within rounding around float32(0.7)
    h_inner = float(np.float32(0.7)) * h * (1 + rng.normal(0, 3e-7 if dtype == "float32" else 1e-14, n))
    pairs = np.stack([np.stack([x, y, x + w, y + h], 1), np.stack([x, y, x + w, y + h_inner], 1)], 1)
    boxes = pairs.reshape(1, 2 * n, 4).astype(dtype)
    scores = np.zeros((1, 80, 2 * n), dtype)
    scores[0, 79] = np.tile([0.9, 0.8], n)
    _, num, _ = assert_same(boxes, scores, keep_top_k=-1)
    assert n < num[0] < 2 * n
    shifted = torchvision.ops.batched_nms(torch.tensor(boxes[0]), torch.tensor(scores[0, 79]),
                                          torch.full((2 * n,), 79), float(np.float32(0.7)))
    assert len(shifted) != num[0]


def test_zero_area_boxes_known_difference():
    """Known limit of the torch twin (documented there): the kernel's IoU of two touching zero-area boxes is
    0/0 = NaN, which suppresses (NaN <= thr is false); torchvision's nms keeps both."""
    boxes = np.array([[[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 0], [1, 0, 3, 0]]], np.float32)
    scores = np.array([[[0.9, 0.8, 0.7, 0.6]]], np.float32)
    ours_t, ours_p, ref = run_all(boxes, scores)
    assert ours_p[2].tolist() == ref[2].tolist() == [0, 2]
    assert ours_t[2].tolist() == [0, 1, 2, 3]
