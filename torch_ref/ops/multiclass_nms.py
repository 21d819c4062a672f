"""PaddleDetection 2.6's multiclass_nms in PyTorch (twin: paddle_impl/ops/multiclass_nms.py, Paddle's multiclass_nms3
kernel), for PP-YOLOE's post-processing: the kernel's rows, order and anchor indices exactly; torchvision's nms
does the greedy suppression."""
import numpy as np
import torch
from torchvision.ops import nms


def _float32(value):
    # Paddle quirk: the kernel's thresholds are float32 attributes, also for float64 inputs (0.7 -> 0.69999998...)
    return float(np.float32(value))


def _stable_desc(key):
    return torch.sort(key, descending=True, stable=True).indices


def _image_nms(boxes, scores, score_threshold, nms_top_k, keep_top_k, iou_threshold):
    """One image: boxes [L, 4], scores [C, L] -> (labels, anchors) [K] int64, grouped by class, then NMS order."""
    labels, anchors = (scores > score_threshold).nonzero(as_tuple=True)  # strict >; by class, anchors ascending
    # Paddle quirk: the kernel sorts std::pair<float, int>, so float64 scores are compared as float32 (ties are
    # then kept in anchor order, std::stable_sort)
    key = scores[labels, anchors].float()
    order = _stable_desc(key)
    order = order[torch.sort(labels[order], stable=True).indices]  # by class, then key descending, then anchor
    labels, anchors, key = labels[order], anchors[order], key[order]
    counts = torch.bincount(labels, minlength=scores.shape[0])
    if nms_top_k > -1:
        # rank within the class: position minus the class's first position
        rank = torch.arange(len(labels), device=labels.device) - (counts.cumsum(0) - counts)[labels]
        top = rank < nms_top_k
        labels, anchors, key = labels[top], anchors[top], key[top]
        counts = counts.clamp(max=nms_top_k)
    # torchvision's nms orders by its scores: a strictly decreasing surrogate imposes the order built above
    surrogate = torch.arange(len(labels), 0, -1, dtype=boxes.dtype, device=boxes.device)
    kept = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    # one nms call per present class, not batched_nms: its class-offset trick shifts the coordinates, which rounds
    # them (float32 IoU off by up to ~1e-3 at class 79 for 700 px boxes); the kernel uses the raw coordinates
    for group in torch.arange(len(labels), device=labels.device).split(counts.tolist()):
        if len(group):
            kept[group[nms(boxes[anchors[group]], surrogate[group], iou_threshold)]] = True
    labels, anchors, key = labels[kept], anchors[kept], key[kept]
    if keep_top_k > -1 and len(labels) > keep_top_k:
        # stable float32 sort over (class, NMS order), then regrouped by class as the kernel's std::map does
        best = _stable_desc(key)[:keep_top_k].sort().values
        labels, anchors = labels[best], anchors[best]
    return labels, anchors


def multiclass_nms(boxes, scores, score_threshold=0.01, nms_top_k=1000, keep_top_k=300, nms_threshold=0.7):
    """Per image and class: scores > score_threshold, top nms_top_k, greedy NMS (IoU > nms_threshold suppresses);
    then the best keep_top_k of the image over all classes. -1 disables either top-k.

    boxes [B, L, 4] x1y1x2y2 and scores [B, C, L] (probabilities), float32 or float64.
    Returns (detections [K, 6] rows [label, score, x1, y1, x2, y2] in the boxes' dtype, images in batch order and
    each grouped by class ascending, then by decreasing score; bbox_num [B] int32; index [K] int64, each row's
    anchor within its own image).

    Known limit: for two overlapping or touching zero-area boxes the kernel's IoU is 0/0 = NaN, and NaN <= thr
    is false, so it suppresses; torchvision keeps them (NaN > thr is false). PP-YOLOE's boxes have width and
    height > 0 (softmax-expected distances), so this does not arise there."""
    score_threshold, iou_threshold = _float32(score_threshold), _float32(nms_threshold)
    rows, nums, index = [], [], []
    for image_boxes, image_scores in zip(boxes, scores):
        labels, anchors = _image_nms(image_boxes, image_scores, score_threshold, nms_top_k, keep_top_k,
                                     iou_threshold)
        rows.append(torch.cat([labels.to(boxes.dtype)[:, None], image_scores[labels, anchors][:, None],
                               image_boxes[anchors]], 1))
        nums.append(len(labels))
        index.append(anchors)
    detections = torch.cat(rows) if rows else boxes.new_zeros((0, 6))
    index = torch.cat(index) if index else torch.zeros(0, dtype=torch.int64, device=boxes.device)
    return detections, torch.tensor(nums, dtype=torch.int32, device=boxes.device), index
