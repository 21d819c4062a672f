"""Box IoU matrices, x1y1x2y2 (twin: paddle_impl/ops/iou.py; float64 NumPy references in align/numpy_ref/)."""
import torch
import torchvision


def box_iou(boxes1, boxes2, eps=None):
    """(N, 4) x (M, 4) x1y1x2y2 -> (N, M) IoU; eps: the union clamped >= eps (mmdet's BboxOverlaps2D) in
    torchvision's formula, bit-equal to torchvision wherever the union >= eps."""
    if eps is None:
        return torchvision.ops.box_iou(boxes1, boxes2)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter).clamp(min=eps)


def legacy_iou(anchors, boxes):
    """(A, 4) x (M, 4) -> (A, M), widths x2 - x1 + 1 (no clamp of the union, as in the official calc_iou)."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    iw = torch.minimum(anchors[:, 2:3], boxes[:, 2]) - torch.maximum(anchors[:, 0:1], boxes[:, 0]) + 1
    ih = torch.minimum(anchors[:, 3:4], boxes[:, 3]) - torch.maximum(anchors[:, 1:2], boxes[:, 1]) + 1
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    union = ((anchors[:, 2] - anchors[:, 0] + 1) * (anchors[:, 3] - anchors[:, 1] + 1))[:, None] + area - inter
    return inter / union
