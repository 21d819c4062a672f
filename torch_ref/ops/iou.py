"""Box IoU matrices, x1y1x2y2 (twin: paddle_impl/ops/iou.py; float64 NumPy references in align/numpy_ref/)."""
import torch
import torchvision


def box_iou(boxes1, boxes2):
    """(N, 4) x (M, 4) x1y1x2y2 -> (N, M) IoU."""
    return torchvision.ops.box_iou(boxes1, boxes2)


def legacy_iou(anchors, boxes):
    """(A, 4) x (M, 4) -> (A, M), widths x2 - x1 + 1 (no clamp of the union, as in the official calc_iou)."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    iw = torch.minimum(anchors[:, 2:3], boxes[:, 2]) - torch.maximum(anchors[:, 0:1], boxes[:, 0]) + 1
    ih = torch.minimum(anchors[:, 3:4], boxes[:, 3]) - torch.maximum(anchors[:, 1:2], boxes[:, 1]) + 1
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    union = ((anchors[:, 2] - anchors[:, 0] + 1) * (anchors[:, 3] - anchors[:, 1] + 1))[:, None] + area - inter
    return inter / union
