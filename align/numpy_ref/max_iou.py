"""Float64 NumPy reference of mmdetection v2's MaxIoUAssigner, written as mmdetection's per-gt loop."""
import numpy as np


def box_iou(boxes1, boxes2, eps=1e-6):
    """IoU without +1, the union clamped >= eps as mmdetection's BboxOverlaps2D does."""
    boxes1, boxes2 = np.asarray(boxes1, np.float64), np.asarray(boxes2, np.float64)
    out = np.zeros((len(boxes1), len(boxes2)))
    for i, a in enumerate(boxes1):
        for j, b in enumerate(boxes2):
            iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
            ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
            inter = iw * ih
            out[i, j] = inter / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter, eps)
    return out


def max_iou_assign(anchors, gt_boxes, gt_labels=None, pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0,
                   low_quality=True, overlaps=None):
    """(gt_inds, max_overlaps, labels) as mmdetection's assign_wrt_overlaps computes them.

    overlaps (G, A) may be given to reuse exactly the IoU another implementation saw (tie tests).
    """
    num_anchors = len(anchors)
    num_gts = len(gt_boxes)
    labels = None if gt_labels is None else np.full(num_anchors, -1, np.int64)
    if num_gts == 0 or num_anchors == 0:
        gt_inds = np.full(num_anchors, 0 if num_gts == 0 else -1, np.int64)
        return gt_inds, np.zeros(num_anchors), labels
    if overlaps is None:
        overlaps = box_iou(gt_boxes, anchors)
    gt_inds = np.full(num_anchors, -1, np.int64)
    max_overlaps = overlaps.max(axis=0)
    argmax = overlaps.argmax(axis=0)  # NumPy documents the first occurrence
    gt_inds[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
    pos = max_overlaps >= pos_iou_thr
    gt_inds[pos] = argmax[pos] + 1
    if low_quality:
        gt_max = overlaps.max(axis=1)
        for i in range(num_gts):
            if gt_max[i] >= min_pos_iou:
                gt_inds[overlaps[i] == gt_max[i]] = i + 1
    if gt_labels is not None:
        gt_labels = np.asarray(gt_labels, np.int64)
        for a in range(num_anchors):
            if gt_inds[a] > 0:
                labels[a] = gt_labels[gt_inds[a] - 1]
    return gt_inds, max_overlaps, labels
