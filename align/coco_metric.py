"""COCO bbox metric (pycocotools COCOeval) and the conversions around it, framework-free.

coco_eval           AP / AR summary of one detection list
detections_to_coco  per-image boxes in the network's input frame -> COCO detections in the original frame
prediction_diff     per-image comparison of two detection lists (torch vs Paddle)
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Iterable, Sequence

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet(verbose):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def coco_eval(coco_gt: Any, detections: list[dict], img_ids: Iterable[int] | None = None,
              verbose: bool = False) -> dict[str, float]:
    """COCOeval(bbox) summary {'AP', 'AP50', ..., 'ARl'} as floats (-1 where COCOeval has no data).

    coco_gt: a pycocotools COCO or an annotation file path; detections: [{'image_id', 'category_id',
    'bbox' [x, y, w, h], 'score'}] (not modified); img_ids: evaluate only these images (default: all).
    An empty detection list evaluates to 0 for categories with ground truth, as COCOeval gives.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from twin_common.coco_files import load_coco
    if not isinstance(coco_gt, COCO):
        coco_gt = load_coco(coco_gt, quiet=not verbose)
    dets = [{"image_id": int(d["image_id"]), "category_id": int(d["category_id"]),
             "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])} for d in detections]
    with _quiet(verbose):
        if dets:
            coco_dt = coco_gt.loadRes(dets)  # loadRes writes into the dicts: they are copies
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                               "categories": list(coco_gt.dataset["categories"]), "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}


def detections_to_coco(boxes: Sequence[Any], scores: Sequence[Any], labels: Sequence[Any], metas: Sequence[dict],
                       label_to_cat_id: Sequence[int]) -> list[dict]:
    """COCO detection dicts from per-image predictions of a batch.

    boxes[i] (N_i, 4) x1y1x2y2 in image i's network input frame (resized, maybe flipped), scores[i] (N_i,),
    labels[i] (N_i,) contiguous labels; metas[i] the loader's meta (img_size, scale_factor, flip, image_id).
    The flip is undone in the resized frame (x1 = W - x2'), then the scale (x / w_scale, y / h_scale).
    Accepts anything np.asarray reads (numpy, CPU torch or Paddle tensors).
    """
    if not (len(boxes) == len(scores) == len(labels) == len(metas)):
        raise ValueError(f"boxes, scores, labels and metas must have one entry per image, got "
                         f"{len(boxes)}, {len(scores)}, {len(labels)}, {len(metas)}")
    out = []
    for b, s, lb, meta in zip(boxes, scores, labels, metas):
        b = np.asarray(b, np.float64).reshape(-1, 4)
        s, lb = np.asarray(s, np.float64).reshape(-1), np.asarray(lb, np.int64).reshape(-1)
        if not len(b) == len(s) == len(lb):
            raise ValueError(f"image {meta['image_id']}: boxes, scores and labels lengths differ "
                             f"({len(b)}, {len(s)}, {len(lb)})")
        if len(lb) and (lb.min() < 0 or lb.max() >= len(label_to_cat_id)):
            raise ValueError(f"labels must be in [0, {len(label_to_cat_id)}), got {lb.min()}..{lb.max()}")
        if meta["flip"]:
            width = meta["img_size"][1]
            b = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)
        w_scale, h_scale = meta["scale_factor"]
        b = b / np.array([w_scale, h_scale, w_scale, h_scale])
        for (x1, y1, x2, y2), score, label in zip(b.tolist(), s.tolist(), lb.tolist()):
            out.append({"image_id": int(meta["image_id"]), "category_id": int(label_to_cat_id[label]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return out


def _by_image(dets):
    groups = {}
    for d in dets:
        groups.setdefault(int(d["image_id"]), []).append(d)
    return groups


def _xyxy(dets):
    b = np.asarray([d["bbox"] for d in dets], np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def _iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(t, p, iou_thr, max_dist=1.0):
    """Greedy: torch detections by descending score (stable), each to the free Paddle detection that is its
    likeliest twin: same category first, then the smallest L-inf box distance (first on ties). The pair is
    kept if the boxes are within max_dist pixels or overlap with IoU >= iou_thr. Distance, not IoU, picks
    the twin: untrained detectors emit degenerate (zero-area) boxes whose IoU with themselves is 0, and
    same-box detections of other classes would tie at IoU 1. Returns [(i, j)]."""
    if not t or not p:
        return []
    tb, pb = _xyxy(t), _xyxy(p)
    dist = np.abs(tb[:, None, :] - pb[None, :, :]).max(-1)
    other_cat = np.array([d["category_id"] for d in t])[:, None] != np.array([d["category_id"] for d in p])[None]
    rank = dist + np.where(other_cat, np.inf, 0.0)
    iou = _iou(tb, pb)
    free = np.ones(len(p), bool)
    pairs = []
    for i in np.argsort([-d["score"] for d in t], kind="stable"):
        if not free.any():
            break
        for cost in (rank[i], dist[i]):            # a same-category twin if there is one, else any box
            j = int(np.argmin(np.where(free, cost, np.inf)))
            if free[j] and (dist[i, j] <= max_dist or iou[i, j] >= iou_thr):
                free[j] = False
                pairs.append((int(i), j))
                break
    return pairs


def prediction_diff(torch_dets: list[dict], paddle_dets: list[dict], iou_thr: float = 0.5) -> dict:
    """Per-image comparison of two COCO detection lists, for the metric report.

    Detections are paired per image (see _match: same category and nearest box first, within 1 pixel or
    IoU >= iou_thr, greedy in torch score order); over the pairs: max |box difference| (original-frame
    xyxy), max |score difference| and the number of category mismatches; unpaired detections are counted
    per side.
    """
    t_by, p_by = _by_image(torch_dets), _by_image(paddle_dets)
    per_image, totals = {}, {"matched": 0, "unmatched_torch": 0, "unmatched_paddle": 0,
                             "label_mismatches": 0, "images_with_count_mismatch": 0}
    max_box, max_score = 0.0, 0.0
    for image_id in sorted(set(t_by) | set(p_by)):
        t, p = t_by.get(image_id, []), p_by.get(image_id, [])
        pairs = _match(t, p, iou_thr)
        ti = [i for i, _ in pairs]
        pj = [j for _, j in pairs]
        box_d = float(np.abs(_xyxy([t[i] for i in ti]) - _xyxy([p[j] for j in pj])).max()) if pairs else 0.0
        score_d = max((abs(t[i]["score"] - p[j]["score"]) for i, j in pairs), default=0.0)
        mism = sum(t[i]["category_id"] != p[j]["category_id"] for i, j in pairs)
        entry = {"torch": len(t), "paddle": len(p), "matched": len(pairs), "max_box_diff": box_d,
                 "max_score_diff": float(score_d), "label_mismatches": int(mism)}
        per_image[str(image_id)] = entry
        totals["matched"] += len(pairs)
        totals["unmatched_torch"] += len(t) - len(pairs)
        totals["unmatched_paddle"] += len(p) - len(pairs)
        totals["label_mismatches"] += int(mism)
        totals["images_with_count_mismatch"] += int(len(t) != len(p))
        max_box, max_score = max(max_box, box_d), max(max_score, float(score_d))
    return {"num_images": len(per_image), "torch_count": len(torch_dets), "paddle_count": len(paddle_dets),
            **totals, "max_box_diff": max_box, "max_score_diff": max_score, "per_image": per_image}
