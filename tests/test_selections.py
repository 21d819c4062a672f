"""align.selections: float32 detections matched by (label, anchor); a flip is accepted only where a decision was
within rounding (score order of overlapping boxes, IoU at the threshold, score at the threshold, the top-k cut)."""
import numpy as np
import pytest

from align.detections import selection_values
from align.selections import DetectionView

VIEW = DetectionView(selection_values(), score_threshold=0.01, iou_threshold=0.7, keep_top_k=10)
BASE = "output.detections.0"


def _records(scores, boxes, keep, dtype, max_det=10):
    """One image's padded detection log of the selection keep = [(label, anchor)], and the full tensors."""
    rec = {"output.scores": scores[None].astype(dtype), "output.boxes": boxes[None].astype(dtype)}
    n = len(keep)
    labels = np.full(max_det, -1, np.int64)
    anchors = np.full(max_det, -1, np.int64)
    labels[:n], anchors[:n] = [k[0] for k in keep], [k[1] for k in keep]
    sel_boxes, sel_scores = np.zeros((max_det, 4), dtype), np.zeros(max_det, dtype)
    sel_boxes[:n] = boxes[anchors[:n]]
    sel_scores[:n] = scores[labels[:n], anchors[:n]]
    rec.update({f"{BASE}.count": np.array([n]), f"{BASE}.labels": labels, f"{BASE}.anchor_index": anchors,
                f"{BASE}.boxes": sel_boxes, f"{BASE}.scores": sel_scores})
    return rec


def _judge(scores, boxes, keep_torch, keep_paddle):
    t64 = _records(scores, boxes, keep_torch, np.float64)
    t32 = _records(scores, boxes, keep_torch, np.float32)
    p32 = _records(scores, boxes, keep_paddle, np.float32)
    return VIEW.judge(t32, p32, VIEW(t32, t64), VIEW(p32, t64), t64, t64)


def _case(second_score, second_box):
    """Class 0: anchor 0 (kept by torch), anchor 1 (kept by Paddle); class 1: anchor 2, kept by both."""
    scores = np.zeros((2, 3))
    scores[0, 0], scores[0, 1], scores[1, 2] = 0.5, second_score, 0.8
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], second_box, [20.0, 20.0, 30.0, 35.0]])
    return _judge(scores, boxes, [(0, 0), (1, 2)], [(0, 1), (1, 2)])


def test_near_tie_of_overlapping_boxes_is_an_explained_flip():
    res = _case(0.5 + 1e-9, [0.0, 0.0, 10.0, 10.5])            # IoU 0.95, scores equal to rounding
    assert res[f"{BASE}.labels"]["passed"] and res[f"{BASE}.anchor_index"]["passed"]
    assert res[f"{BASE}.anchor_index"]["events"] == {"flipped": 2, "explained_by_nms_order": 2}
    assert res[f"{BASE}.scores"]["matched"] == 1 and res[f"{BASE}.scores"]["passed"]


def test_iou_at_the_threshold_is_an_explained_flip():
    # box 1 = [0, 0, 10, 7]: IoU with box 0 is exactly 0.7; the scores are far apart
    res = _case(0.3, [0.0, 0.0, 10.0, 7.0 + 1e-9])
    assert res[f"{BASE}.anchor_index"]["passed"]
    assert "explained_by_iou_threshold" in res[f"{BASE}.anchor_index"]["events"]


@pytest.mark.parametrize("second_score, second_box", [(0.3, [0.0, 0.0, 10.0, 10.5]),     # overlap, far scores
                                                      (0.5 + 1e-9, [50.0, 50.0, 60.0, 60.0])])  # tie, no overlap
def test_a_flip_no_rounding_explains_fails(second_score, second_box):
    res = _case(second_score, second_box)
    for field in ("labels", "anchor_index", "count"):
        assert not res[f"{BASE}.{field}"]["passed"]
        assert res[f"{BASE}.{field}"]["unexplained"] >= 1
    assert res[f"{BASE}.scores"]["passed"]                      # the matched detection itself agrees


def test_planted_nms_threshold_defect_is_caught_in_float32(tmp_path, monkeypatch):
    """The Paddle twin suppressing at IoU > 0.6 instead of 0.7 changes decisions far beyond rounding."""
    import paddle_impl.detectors.ppyoloe as pd
    from align.forward_diff import run
    real = pd.multiclass_nms
    monkeypatch.setattr(pd, "multiclass_nms", lambda b, s, **kw: real(b, s, **{**kw, "nms_threshold": 0.6}))
    summary = run("ppyoloe_s", "float32", str(tmp_path), input_shape=(1, 3, 96, 128))
    assert not summary["passed"]
    stats = summary["keys"][f"{BASE}.anchor_index"]
    assert not stats["passed"] and stats["unexplained"] > 10
