"""Float64 NumPy references of PP-YOLOE's two assigners, written from ../shared/specs/ppyoloe.md A.9 (ATSS) and
A.10 (task-aligned) with plain loops over images, GTs and anchors, independently of the twins
(torch_ref/assigners/{atss,task_aligned}.py and their paddle_impl/ twins).

Topk ties go to the lowest index here (a stable sort). PaddleDetection and the twins use each framework's
native topk, which does not (A.14 #5): compare against this reference only on inputs without ties at the
topk boundary. Each function returns (labels (B, L) int64, bboxes (B, L, 4), scores (B, L, C), mask_positive
(B, n, L)) and, with return_info, a dict counting how often the multi-GT rule fired.
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


def inside(point, box, eps=1e-9):
    """Point strictly inside the box: min(l, t, r, b) > eps."""
    x, y = point
    return min(x - box[0], y - box[1], box[2] - x, box[3] - y) > eps


def smallest_k(values, k):
    """Indices of the k smallest values, lowest index first among equal ones."""
    return [int(i) for i in np.argsort(np.asarray(values), kind="stable")[:k]]


def largest_k(values, k):
    return [int(i) for i in np.argsort(-np.asarray(values), kind="stable")[:k]]


def _resolve_and_assign(pos, ious, gt_labels, gt_bboxes, bg_index, info):
    """A.9 steps 8-9 for one image: pos (n, L) 0/1 is changed in place. Returns labels (L,), boxes (L, 4)."""
    n, num_anchors = pos.shape
    labels = np.full(num_anchors, bg_index, np.int64)
    boxes = np.zeros((num_anchors, 4))
    for a in range(num_anchors):
        if pos[:, a].sum() > 1:
            winner = int(np.argmax(ious[:, a]))          # over all n GTs, first index on ties
            info["multi_gt_anchors"] += 1
            if pos[winner, a] == 0:
                info["winner_not_candidate"] += 1
            pos[:, a] = 0
            pos[winner, a] = 1
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


def atss_assign(anchor_bboxes, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask, bg_index, pred_bboxes=None,
                topk=9, num_classes=80, return_info=False):
    anchors = np.asarray(anchor_bboxes, np.float64)
    gt_labels, gt_bboxes, pad = _gt_arrays(gt_labels, gt_bboxes, pad_gt_mask)
    batch, n = gt_labels.shape
    num_anchors = len(anchors)
    centres = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors]
    starts = np.concatenate([[0], np.cumsum(num_anchors_list)[:-1]]).astype(int)
    info = {"multi_gt_anchors": 0, "winner_not_candidate": 0}
    out_labels, out_boxes, out_scores, out_mask = _outputs(batch, n, num_anchors, num_classes)
    for b in range(batch):
        ious = np.array([[box_iou(g, a, 1e-10) for a in anchors] for g in gt_bboxes[b]])
        pos = np.zeros((n, num_anchors))
        for g in range(n):
            if pad[b, g] == 0:
                continue                                  # padded GTs have no candidates
            box = gt_bboxes[b, g]
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            candidates = []
            for start, count in zip(starts, num_anchors_list):
                dist = [math.hypot(cx - centres[a][0], cy - centres[a][1]) for a in range(start, start + count)]
                candidates += [start + i for i in smallest_k(dist, topk)]
            values = ious[g, candidates]
            threshold = values.mean() + values.std(ddof=1)   # unbiased std
            for a in candidates:
                if ious[g, a] > threshold and inside(centres[a], box):
                    pos[g, a] = 1.0
        labels, boxes = _resolve_and_assign(pos, ious, gt_labels[b], gt_bboxes[b], bg_index, info)
        if pred_bboxes is None:
            weight = np.ones(num_anchors)
        else:
            weight = np.zeros(num_anchors)
            for a in range(num_anchors):
                weight[a] = max(box_iou(gt_bboxes[b, g], pred_bboxes[b][a], 1e-9) * pos[g, a] for g in range(n))
        out_labels[b], out_boxes[b], out_mask[b] = labels, boxes, pos
        out_scores[b] = _one_hot_scores(labels, num_classes, bg_index, weight)
    result = (out_labels, out_boxes, out_scores, out_mask)
    return result + (info,) if return_info else result


def task_aligned_assign(pred_scores, pred_bboxes, anchor_points, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask,
                        bg_index, topk=13, alpha=1.0, beta=6.0, eps=1e-9, return_info=False):
    pred_scores = np.asarray(pred_scores, np.float64)
    pred_bboxes = np.asarray(pred_bboxes, np.float64)
    points = np.asarray(anchor_points, np.float64)
    gt_labels, gt_bboxes, pad = _gt_arrays(gt_labels, gt_bboxes, pad_gt_mask)
    batch, n = gt_labels.shape
    num_anchors, num_classes = pred_scores.shape[1:]
    info = {"multi_gt_anchors": 0, "winner_not_candidate": 0}
    out_labels, out_boxes, out_scores, out_mask = _outputs(batch, n, num_anchors, num_classes)
    for b in range(batch):
        ious = np.array([[box_iou(g, p, 1e-9) for p in pred_bboxes[b]] for g in gt_bboxes[b]])
        metrics = np.zeros((n, num_anchors))
        pos = np.zeros((n, num_anchors))
        for g in range(n):
            box = gt_bboxes[b, g]
            is_in = [inside(points[a], box) for a in range(num_anchors)]
            for a in range(num_anchors):
                metrics[g, a] = pred_scores[b, a, gt_labels[b, g]] ** alpha * ious[g, a] ** beta
            if pad[b, g] == 0:
                continue
            for a in largest_k([metrics[g, a] * is_in[a] for a in range(num_anchors)], topk):
                if is_in[a]:
                    pos[g, a] = 1.0
        labels, boxes = _resolve_and_assign(pos, ious, gt_labels[b], gt_bboxes[b], bg_index, info)
        target = np.zeros(num_anchors)
        for g in range(n):
            m = metrics[g] * pos[g]
            norm = m / (m.max() + eps) * (ious[g] * pos[g]).max()
            target = np.maximum(target, norm)
        out_labels[b], out_boxes[b], out_mask[b] = labels, boxes, pos
        out_scores[b] = _one_hot_scores(labels, num_classes, bg_index, target)
    result = (out_labels, out_boxes, out_scores, out_mask)
    return result + (info,) if return_info else result
