"""Box IoU matrices, x1y1x2y2 (twin: torch_ref/ops/iou.py; float64 NumPy references in align/numpy_ref/)."""
import paddle


def box_iou(boxes1, boxes2, eps=None):
    """(N, 4) x (M, 4) x1y1x2y2 -> (N, M) IoU, torchvision's formula; eps: the union clamped >= eps (mmdet's
    BboxOverlaps2D), bit-equal to the plain formula wherever the union >= eps."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = paddle.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = paddle.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = paddle.clip(rb - lt, min=0.0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2[None, :] - inter
    if eps is not None:
        union = paddle.maximum(union, paddle.full([], eps, dtype=inter.dtype))
    # Paddle's same-shape divide of >= ~1000 elements (MKL VML path) is off by 1 ulp on ~0.1% of
    # elements; the broadcasting path is correctly rounded and matches torchvision bit for bit.
    return (inter[None] / union)[0]


def legacy_iou(anchors, boxes):
    """(A, 4) x (M, 4) -> (A, M), widths x2 - x1 + 1 (no clamp of the union, as in the official calc_iou)."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    iw = paddle.minimum(anchors[:, 2:3], boxes[:, 2]) - paddle.maximum(anchors[:, 0:1], boxes[:, 0]) + 1
    ih = paddle.minimum(anchors[:, 3:4], boxes[:, 3]) - paddle.maximum(anchors[:, 1:2], boxes[:, 1]) + 1
    inter = iw.clip(min=0) * ih.clip(min=0)
    union = ((anchors[:, 2] - anchors[:, 0] + 1) * (anchors[:, 3] - anchors[:, 1] + 1))[:, None] + area - inter
    return inter / union
