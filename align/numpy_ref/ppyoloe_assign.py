"""Float64 NumPy references of PP-YOLOE's two assigners, written from ../shared/specs/ppyoloe.md A.9 (ATSS) and
A.10 (task-aligned) with plain loops over images, GTs and anchors, independently of the twins
(torch_ref/assigners/{atss,task_aligned}.py and their paddle_impl/ twins).

Topk ties go to the lowest index here (a stable sort). PaddleDetection and the twins use each framework's
native topk, which does not (A.14 #5): compare against this reference only on inputs without ties at the
topk boundary, or pass `select` (values, k, largest) -> k indices, e.g. a native topk, to decide the topk
selections (align/assign_runner.py passes Paddle's). Each function returns (labels (B, L) int64, bboxes
(B, L, 4), scores (B, L, C), mask_positive (B, n, L)) and, with return_info, a dict counting how often the
multi-GT rule fired and how many topk selections differ from the lowest-index rule ("topk_ties"), with the
float64 values behind each decision (IoUs, thresholds, inside margins, the distances or metrics at each topk
boundary) under "decisions". atss_targets and task_aligned_targets are steps 9-10 (A.10: 7-8) alone, on a
given final mask_positive: the float64 targets of another run's assignment.
"""
import math

import numpy as np


def box_iou(a, b, eps):
    """IoU of two x1y1x2y2 boxes: no +1, sides clipped at 0, union + eps."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    return inter / (area_a + area_b - inter + eps)


def ltrb_min(point, box):
    """min(l, t, r, b) of a point and an x1y1x2y2 box."""
    x, y = point
    return min(x - box[0], y - box[1], box[2] - x, box[3] - y)


def inside(point, box, eps=1e-9):
    """Point strictly inside the box: min(l, t, r, b) > eps."""
    return ltrb_min(point, box) > eps


def smallest_k(values, k):
    """Indices of the k smallest values, lowest index first among equal ones."""
    return [int(i) for i in np.argsort(np.asarray(values), kind="stable")[:k]]


def largest_k(values, k):
    return [int(i) for i in np.argsort(-np.asarray(values), kind="stable")[:k]]


def _topk(values, k, largest, select, info):
    """The topk selection: `select`'s when given (counted in info["topk_ties"] where its set differs from the
    lowest-index rule's), else the lowest-index rule's."""
    stable = largest_k(values, k) if largest else smallest_k(values, k)
    if select is None:
        return stable
    chosen = [int(i) for i in select(np.asarray(values, np.float64), k, largest)]
    if len(chosen) != k or len(set(chosen)) != k:
        raise ValueError(f"select must return {k} distinct indices, got {chosen}")
    info["topk_ties"] += set(chosen) != set(stable)
    return chosen


def _edge(values, k, largest):
    """The k-th and (k+1)-th of the sorted values (the topk boundary; the (k+1)-th inf when there is none)."""
    ordered = np.sort(np.asarray(values, np.float64))
    ordered = ordered[::-1] if largest else ordered
    return ordered[k - 1], ordered[k] if len(ordered) > k else np.inf


def _new_info(batch, n, num_anchors):
    return {"multi_gt_anchors": 0, "winner_not_candidate": 0, "topk_ties": 0,
            "decisions": {"ious": np.zeros((batch, n, num_anchors)),
                          "inside_margin": np.full((batch, n, num_anchors), np.nan)}}


def _resolve(pos, ious, info):
    """A.9 step 8 for one image: pos (n, L) 0/1 is changed in place."""
    for a in range(pos.shape[1]):
        if pos[:, a].sum() > 1:
            winner = int(np.argmax(ious[:, a]))          # over all n GTs, first index on ties
            info["multi_gt_anchors"] += 1
            if pos[winner, a] == 0:
                info["winner_not_candidate"] += 1
            pos[:, a] = 0
            pos[winner, a] = 1


def _labels_and_boxes(pos, gt_labels, gt_bboxes, bg_index):
    """A.9 step 9 for one image. Returns labels (L,), boxes (L, 4)."""
    n, num_anchors = pos.shape
    labels = np.full(num_anchors, bg_index, np.int64)
    boxes = np.zeros((num_anchors, 4))
    for a in range(num_anchors):
        g = int(np.argmax(pos[:, a]))                     # 0 for an all-zero column
        if pos[:, a].sum() > 0:
            labels[a] = gt_labels[g]
        boxes[a] = gt_bboxes[g]
    return labels, boxes


def _one_hot_scores(labels, num_classes, bg_index, weight):
    """one_hot(labels, num_classes + 1) without the bg column, times weight (L,)."""
    scores = np.zeros((len(labels), num_classes))
    for a, label in enumerate(labels):
        if label != bg_index:
            scores[a, label if label < bg_index else label - 1] = weight[a]
    return scores


def _gt_arrays(gt_labels, gt_bboxes, pad_gt_mask):
    """gt_labels (B, n), gt_bboxes (B, n, 4) and pad_gt_mask (B, n) as float64 / integer arrays."""
    labels = np.asarray(gt_labels).reshape(len(gt_bboxes), -1)
    return labels, np.asarray(gt_bboxes, np.float64), np.asarray(pad_gt_mask, np.float64).reshape(labels.shape)


def _outputs(batch, n, num_anchors, num_classes):
    """Zeroed (labels, boxes, scores, mask_positive) of an assignment."""
    return (np.zeros((batch, num_anchors), np.int64), np.zeros((batch, num_anchors, 4)),
            np.zeros((batch, num_anchors, num_classes)), np.zeros((batch, n, num_anchors)))


def _atss_weight(pos, gt_bboxes, pred_bboxes):
    """A.9 step 10's weight for one image: max over GTs of IoU(GT, prediction) (eps 1e-9) * pos, or 1."""
    n, num_anchors = pos.shape
    if pred_bboxes is None:
        return np.ones(num_anchors)
    weight = np.zeros(num_anchors)
    for a in range(num_anchors):
        weight[a] = max(box_iou(gt_bboxes[g], pred_bboxes[a], 1e-9) * pos[g, a] for g in range(n))
    return weight


def atss_assign(anchor_bboxes, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask, bg_index, pred_bboxes=None,
                topk=9, num_classes=80, return_info=False, select=None):
    anchors = np.asarray(anchor_bboxes, np.float64)
    gt_labels, gt_bboxes, pad = _gt_arrays(gt_labels, gt_bboxes, pad_gt_mask)
    batch, n = gt_labels.shape
    num_anchors = len(anchors)
    centres = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors]
    starts = np.concatenate([[0], np.cumsum(num_anchors_list)[:-1]]).astype(int)
    info = _new_info(batch, n, num_anchors)
    decisions = info["decisions"]
    decisions.update(threshold=np.full((batch, n), np.nan), candidate=np.zeros((batch, n, num_anchors), bool),
                     topk_edge=np.full((batch, n, len(starts), 2), np.inf))
    out_labels, out_boxes, out_scores, out_mask = _outputs(batch, n, num_anchors, num_classes)
    for b in range(batch):
        ious = np.array([[box_iou(g, a, 1e-10) for a in anchors] for g in gt_bboxes[b]])
        decisions["ious"][b] = ious
        pos = np.zeros((n, num_anchors))
        for g in range(n):
            if pad[b, g] == 0:
                continue                                  # padded GTs have no candidates
            box = gt_bboxes[b, g]
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            candidates = []
            for level, (start, count) in enumerate(zip(starts, num_anchors_list)):
                dist = [math.hypot(cx - centres[a][0], cy - centres[a][1]) for a in range(start, start + count)]
                candidates += [start + i for i in _topk(dist, topk, False, select, info)]
                decisions["topk_edge"][b, g, level] = _edge(dist, topk, False)
            values = ious[g, candidates]
            threshold = values.mean() + values.std(ddof=1)   # unbiased std
            decisions["threshold"][b, g] = threshold
            decisions["candidate"][b, g, candidates] = True
            for a in candidates:
                decisions["inside_margin"][b, g, a] = ltrb_min(centres[a], box) - 1e-9
                if ious[g, a] > threshold and inside(centres[a], box):
                    pos[g, a] = 1.0
        _resolve(pos, ious, info)
        out_mask[b] = pos
    out_labels, out_boxes, out_scores = atss_targets(out_mask, gt_labels, gt_bboxes, bg_index, pred_bboxes,
                                                     num_classes)
    result = (out_labels, out_boxes, out_scores, out_mask)
    return result + (info,) if return_info else result


def atss_targets(mask_positive, gt_labels, gt_bboxes, bg_index, pred_bboxes=None, num_classes=80):
    """A.9 steps 9-10 on a final mask_positive (B, n, L): (labels (B, L), bboxes (B, L, 4), scores (B, L, C))."""
    gt_labels, gt_bboxes, _ = _gt_arrays(gt_labels, gt_bboxes, np.ones(np.shape(gt_bboxes)[:2]))
    mask = np.asarray(mask_positive, np.float64)
    batch, _, num_anchors = mask.shape
    out_labels, out_boxes, out_scores, _ = _outputs(batch, 0, num_anchors, num_classes)
    for b in range(batch):
        out_labels[b], out_boxes[b] = _labels_and_boxes(mask[b], gt_labels[b], gt_bboxes[b], bg_index)
        weight = _atss_weight(mask[b], gt_bboxes[b], None if pred_bboxes is None else np.asarray(pred_bboxes[b]))
        out_scores[b] = _one_hot_scores(out_labels[b], num_classes, bg_index, weight)
    return out_labels, out_boxes, out_scores


def _tal_metrics(scores, ious, gt_labels, alpha, beta):
    """A.10 step 3 for one image: (n, L) score of the GT's class ** alpha * IoU ** beta."""
    metrics = np.zeros(ious.shape)
    for g in range(ious.shape[0]):
        for a in range(ious.shape[1]):
            metrics[g, a] = scores[a, gt_labels[g]] ** alpha * ious[g, a] ** beta
    return metrics


def task_aligned_assign(pred_scores, pred_bboxes, anchor_points, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask,
                        bg_index, topk=13, alpha=1.0, beta=6.0, eps=1e-9, return_info=False, select=None):
    pred_scores = np.asarray(pred_scores, np.float64)
    pred_bboxes = np.asarray(pred_bboxes, np.float64)
    points = np.asarray(anchor_points, np.float64)
    gt_labels, gt_bboxes, pad = _gt_arrays(gt_labels, gt_bboxes, pad_gt_mask)
    batch, n = gt_labels.shape
    num_anchors, num_classes = pred_scores.shape[1:]
    info = _new_info(batch, n, num_anchors)
    decisions = info["decisions"]
    decisions.update(metrics=np.zeros((batch, n, num_anchors)), topk_edge=np.full((batch, n, 2), np.inf))
    out_labels, out_boxes, out_scores, out_mask = _outputs(batch, n, num_anchors, num_classes)
    for b in range(batch):
        ious = np.array([[box_iou(g, p, 1e-9) for p in pred_bboxes[b]] for g in gt_bboxes[b]])
        metrics = _tal_metrics(pred_scores[b], ious, gt_labels[b], alpha, beta)
        decisions["ious"][b], decisions["metrics"][b] = ious, metrics
        pos = np.zeros((n, num_anchors))
        for g in range(n):
            box = gt_bboxes[b, g]
            margins = [ltrb_min(points[a], box) - 1e-9 for a in range(num_anchors)]
            decisions["inside_margin"][b, g] = margins
            is_in = [m > 0 for m in margins]         # ltrb_min > eps: a subtraction keeps the exact sign
            if pad[b, g] == 0:
                continue
            values = [metrics[g, a] * is_in[a] for a in range(num_anchors)]
            decisions["topk_edge"][b, g] = _edge(values, topk, True)
            for a in _topk(values, topk, True, select, info):
                if is_in[a]:
                    pos[g, a] = 1.0
        _resolve(pos, ious, info)
        out_mask[b] = pos
        out_labels[b], out_boxes[b], out_scores[b] = _tal_targets(pos, ious, metrics, gt_labels[b], gt_bboxes[b],
                                                                  bg_index, num_classes, eps)
    result = (out_labels, out_boxes, out_scores, out_mask)
    return result + (info,) if return_info else result


def _tal_targets(pos, ious, metrics, gt_labels, gt_bboxes, bg_index, num_classes, eps):
    """A.10 steps 7-8 for one image: labels (L,), boxes (L, 4), scores (L, C)."""
    labels, boxes = _labels_and_boxes(pos, gt_labels, gt_bboxes, bg_index)
    target = np.zeros(pos.shape[1])
    for g in range(pos.shape[0]):
        m = metrics[g] * pos[g]
        norm = m / (m.max() + eps) * (ious[g] * pos[g]).max()
        target = np.maximum(target, norm)
    return labels, boxes, _one_hot_scores(labels, num_classes, bg_index, target)


def task_aligned_targets(mask_positive, pred_scores, pred_bboxes, gt_labels, gt_bboxes, bg_index, alpha=1.0, beta=6.0,
                         eps=1e-9):
    """A.10 steps 7-8 on a final mask_positive (B, n, L): (labels (B, L), bboxes (B, L, 4), scores (B, L, C))."""
    pred_scores = np.asarray(pred_scores, np.float64)
    pred_bboxes = np.asarray(pred_bboxes, np.float64)
    gt_labels, gt_bboxes, _ = _gt_arrays(gt_labels, gt_bboxes, np.ones(np.shape(gt_bboxes)[:2]))
    mask = np.asarray(mask_positive, np.float64)
    batch, n, num_anchors = mask.shape
    out_labels, out_boxes, out_scores, _ = _outputs(batch, n, num_anchors, pred_scores.shape[2])
    for b in range(batch):
        ious = np.array([[box_iou(g, p, 1e-9) for p in pred_bboxes[b]] for g in gt_bboxes[b]])
        metrics = _tal_metrics(pred_scores[b], ious, gt_labels[b], alpha, beta)
        out_labels[b], out_boxes[b], out_scores[b] = _tal_targets(mask[b], ious, metrics, gt_labels[b], gt_bboxes[b],
                                                                  bg_index, pred_scores.shape[2], eps)
    return out_labels, out_boxes, out_scores
