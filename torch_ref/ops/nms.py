"""Class-aware NMS (twin: paddle_impl/ops/nms.py): torchvision's batched_nms."""
import numpy as np
import torch
from torchvision.ops import batched_nms as _tv_batched_nms


def batched_nms(boxes, scores, labels, iou_threshold):
    """Indices of the kept boxes, by decreasing score; boxes of different labels never suppress each other."""
    return _tv_batched_nms(boxes, scores, labels, iou_threshold)


def stable_nms(boxes, scores, groups, iou_threshold):
    """mmcv's NMS per group (RPN levels, R-CNN classes): kept indices by score descending, ties by index
    ascending; IoU > thr suppresses only within a group.

    The threshold is rounded to float32 as mmcv's (and Paddle's) kernels take it (0.7 -> 0.699999988). The
    decision runs in float64 whatever the dtype: batched_nms's class-offset trick (<= 1000 boxes on CPU) shifts
    the coordinates by up to ~80 image widths, which rounds float32 IoUs by up to ~1e-3 (ops/multiclass_nms.py)
    and float64 ones by ~1e-13. Neither torchvision's nor mmcv's final sort is stable: a strictly decreasing
    surrogate of the stable order replaces the scores, so both twins keep and order ties by index."""
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.arange(len(order), 0, -1, dtype=torch.float64, device=scores.device)
    keep = batched_nms(boxes[order].double(), rank, groups[order], float(np.float32(iou_threshold)))
    return order[keep]
