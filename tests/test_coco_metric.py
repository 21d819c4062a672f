"""COCOeval wrapper against hand-computed AP, the frame conversion round trip, and the prediction diff."""
import copy
import json

import numpy as np
import pytest

import torch_ref.data as td
from align.coco_metric import coco_eval, detections_to_coco, prediction_diff
from align.synthetic_coco import ensure_synthetic_coco


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_coco")
    ensure_synthetic_coco(root, num_images=12, seed=0)
    return root


@pytest.fixture
def two_gt_file(tmp_path):
    """One 300x200 image, category 5, two medium gts (50x50)."""
    data = {"images": [{"id": 1, "file_name": "x.png", "width": 300, "height": 200}],
            "categories": [{"id": 5, "name": "thing"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 5, "bbox": [100, 100, 50, 50], "area": 2500,
                 "iscrowd": 0}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_known_ap_by_hand(two_gt_file):
    dets = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "score": 0.9},     # TP (IoU 1)
            {"image_id": 1, "category_id": 5, "bbox": [200, 10, 40, 40], "score": 0.8},    # FP
            {"image_id": 1, "category_id": 5, "bbox": [100, 100, 50, 36], "score": 0.7}]   # IoU 0.72
    before = copy.deepcopy(dets)
    stats = coco_eval(two_gt_file, dets)
    assert dets == before  # the caller's list is not modified (loadRes writes into its input)
    # IoU thresholds 0.50..0.70 (5 of 10): TP FP TP -> interpolated precision 1 up to recall 0.5 (51 of
    # the 101 recall points) and 2/3 above (50 points). 0.75..0.95: TP FP FP -> 1 up to 0.5, then 0.
    ap_low, ap_high = (51 + 50 * 2 / 3) / 101, 51 / 101
    assert stats["AP50"] == pytest.approx(ap_low, abs=1e-12)
    assert stats["AP75"] == pytest.approx(ap_high, abs=1e-12)
    assert stats["AP"] == pytest.approx((ap_low + ap_high) / 2, abs=1e-12)
    assert stats["APm"] == pytest.approx(stats["AP"], abs=1e-12)
    assert stats["APs"] == -1 and stats["APl"] == -1  # no small or large gts
    assert stats["AR100"] == pytest.approx(0.75, abs=1e-12)   # recall 1 at 5 thresholds, 0.5 at 5
    assert stats["AR1"] == pytest.approx(0.5, abs=1e-12)      # only the top detection counts


def test_empty_detections(two_gt_file):
    stats = coco_eval(two_gt_file, [])
    assert stats["AP"] == 0 and stats["AP50"] == 0 and stats["AR100"] == 0 and stats["APs"] == -1


def test_detections_to_coco_by_hand():
    meta = {"image_id": 4, "img_size": (100, 200), "scale_factor": (2.0, 2.5), "flip": True}
    dets = detections_to_coco([np.array([[10.0, 20.0, 50.0, 45.0]])], [np.array([0.6])], [np.array([1])],
                              [meta], [1, 3, 7])
    # unflip in the 200-wide resized frame: x1 = 200 - 50, x2 = 200 - 10; then divide by (2, 2.5)
    assert dets == [{"image_id": 4, "category_id": 3, "bbox": [75.0, 8.0, 20.0, 10.0], "score": 0.6}]
    with pytest.raises(ValueError, match="labels"):
        detections_to_coco([np.zeros((1, 4))], [np.ones(1)], [np.array([3])], [meta], [1, 3, 7])
    with pytest.raises(ValueError, match="one entry per image"):
        detections_to_coco([np.zeros((1, 4))], [], [], [meta], [1, 3, 7])


@pytest.mark.parametrize("dtype,atol", [("float64", 1e-9), ("float32", 2e-4)])
def test_round_trip_through_the_loader_is_perfect(coco_root, dtype, atol):
    """Ground truth pushed through resize + flip and mapped back gives the json boxes and AP 1."""
    ds = td.CocoDetection(coco_root)
    loader = td.build_loader(ds, batch_size=4, seed=0, dtype=dtype, short_side=200, max_size=333)
    dets, flips = [], []
    for batch in loader:
        dets += detections_to_coco(batch["boxes"], [np.ones(len(b)) for b in batch["boxes"]],
                                   batch["labels"], batch["metas"], ds.label_to_cat_id)
        flips += [m["flip"] for m in batch["metas"]]
    assert any(flips) and not all(flips)
    gt = {(a["image_id"], a["category_id"], tuple(np.round(a["bbox"], 3))): a["bbox"]
          for a in ds.coco.dataset["annotations"]}
    assert len(dets) == len(gt)
    for d in dets:
        key = (d["image_id"], d["category_id"], tuple(np.round(d["bbox"], 3)))
        np.testing.assert_allclose(d["bbox"], gt[key], rtol=0, atol=atol)
    stats = coco_eval(ds.coco, dets)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert stats[name] == pytest.approx(1.0, abs=1e-12), (name, stats)  # COCOeval: tp / (tp + eps)


def test_perturbing_scores_and_boxes_lowers_ap(coco_root):
    ds = td.CocoDetection(coco_root)
    gt = ds.coco.dataset["annotations"]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt]
    shifted = [dict(d, bbox=[d["bbox"][0] + 0.3 * d["bbox"][2]] + d["bbox"][1:]) for d in perfect]  # IoU ~0.54
    stats = coco_eval(ds.coco, shifted)
    assert stats["AP50"] == pytest.approx(1.0, abs=1e-12) and stats["AP75"] == 0.0
    assert stats["AP"] == pytest.approx(0.1, abs=1e-12)
    assert coco_eval(ds.coco, perfect, img_ids=[1, 2])["AP"] == pytest.approx(1.0, abs=1e-12)


def test_prediction_diff():
    t = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
         {"image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10], "score": 0.8},
         {"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.7}]
    p = [{"image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10.25], "score": 0.75},   # same box, 0.25 taller
         {"image_id": 1, "category_id": 7, "bbox": [0.5, 0, 10, 10], "score": 0.9},       # other category
         {"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1}]
    d = prediction_diff(t, p)
    assert (d["num_images"], d["torch_count"], d["paddle_count"]) == (3, 3, 3)
    assert (d["matched"], d["unmatched_torch"], d["unmatched_paddle"]) == (2, 1, 1)
    assert d["label_mismatches"] == 1 and d["images_with_count_mismatch"] == 2
    assert d["max_box_diff"] == pytest.approx(0.5, rel=1e-12) and d["max_score_diff"] == pytest.approx(0.05, rel=1e-12)
    assert d["per_image"]["1"] == {"torch": 2, "paddle": 2, "matched": 2, "max_box_diff": 0.5,
                                   "max_score_diff": pytest.approx(0.05, rel=1e-12), "label_mismatches": 1}
    same = prediction_diff(t, copy.deepcopy(t))
    assert same["matched"] == 3 and same["max_box_diff"] == 0 and same["label_mismatches"] == 0


def test_prediction_diff_pairs_twins_not_lookalikes():
    """Untrained detectors emit zero-area boxes (IoU 0 with themselves) and one box under several classes:
    each detection must still pair with its twin, not with a same-box detection of another class."""
    box = [10, 10, 30, 20]
    t = [{"image_id": 1, "category_id": 1, "bbox": box, "score": 0.9},
         {"image_id": 1, "category_id": 2, "bbox": box, "score": 0.8},
         {"image_id": 1, "category_id": 2, "bbox": [40, 40, 0, 0], "score": 0.7}]
    p = [{"image_id": 1, "category_id": 2, "bbox": [40, 40, 0, 0], "score": 0.7},
         {"image_id": 1, "category_id": 2, "bbox": box, "score": 0.8},
         {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20.5], "score": 0.9}]
    d = prediction_diff(t, p)
    assert (d["matched"], d["unmatched_torch"], d["label_mismatches"]) == (3, 0, 0)
    assert d["max_box_diff"] == pytest.approx(0.5, rel=1e-12) and d["max_score_diff"] == 0
