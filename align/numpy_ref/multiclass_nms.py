"""NumPy reference of PaddleDetection 2.6's multiclass_nms (Paddle's multiclass_nms3 kernel, normalized=True,
nms_eta=1, no background class, return_index), written as the kernel's per-image, per-class, per-box loops.

It is the independent expectation for both twins (ops/multiclass_nms.py). Float64 inputs are computed in float64;
float32 inputs in float32, because the kernel makes its IoU decisions in the inputs' dtype (T) and a float64 IoU
would flip pairs at the threshold. Like the kernel, the thresholds are float32 and sort keys are float32 scores.
"""
import numpy as np


def _iou(box, kept):
    """IoU of box [4] with each of kept [N, 4], the kernel's JaccardOverlap (normalized: no +1)."""
    disjoint = (kept[:, 0] > box[2]) | (kept[:, 2] < box[0]) | (kept[:, 1] > box[3]) | (kept[:, 3] < box[1])
    inter_w = np.minimum(box[2], kept[:, 2]) - np.maximum(box[0], kept[:, 0])
    inter_h = np.minimum(box[3], kept[:, 3]) - np.maximum(box[1], kept[:, 1])
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (area + areas - inter)
    return np.where(disjoint, 0, iou)


def _stable_desc(keys):
    """Positions of keys by decreasing value, ties in their given order (std::stable_sort on float32 pairs)."""
    return sorted(range(len(keys)), key=lambda i: -float(np.float32(keys[i])))


def multiclass_nms(boxes, scores, score_threshold=0.01, nms_top_k=1000, keep_top_k=300, nms_threshold=0.7):
    """-> (detections [K, 6] rows [label, score, x1, y1, x2, y2], bbox_num [B] int32, index [K] int64 per image)."""
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    dtype = boxes.dtype
    score_thr = dtype.type(np.float32(score_threshold))
    iou_thr = dtype.type(np.float32(nms_threshold))
    rows, nums, index = [], [], []
    for b in range(boxes.shape[0]):
        selected = []  # (label, anchor), by class then NMS order
        for c in range(scores.shape[1]):
            s = scores[b, c]
            cand = [i for i in range(len(s)) if s[i] > score_thr]
            cand = [cand[j] for j in _stable_desc([s[i] for i in cand])]
            if nms_top_k > -1:
                cand = cand[:nms_top_k]
            kept = []
            for i in cand:
                if not kept or np.all(_iou(boxes[b, i], boxes[b, kept]) <= iou_thr):
                    kept.append(i)
            selected += [(c, i) for i in kept]
        if keep_top_k > -1 and len(selected) > keep_top_k:
            best = _stable_desc([scores[b, c, i] for c, i in selected])[:keep_top_k]
            selected = [selected[j] for j in sorted(best)]  # regrouped by class, as the kernel's std::map does
        for c, i in selected:
            rows.append([c, scores[b, c, i], *boxes[b, i]])
            index.append(i)
        nums.append(len(selected))
    det = np.array(rows, dtype).reshape(-1, 6)
    return det, np.array(nums, np.int32), np.array(index, np.int64)
