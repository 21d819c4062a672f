"""GIoU loss (PaddleDetection GIoULoss) with a hand-written backward pass.

Subgradient conventions match both frameworks: max/min ties split the gradient in half; clamp(min=0)
passes it at exactly 0.
"""
import numpy as np

from .common import f64, reduce, unbroadcast, weighted


def _max_grad(a, b):
    """d max(a, b)/da, d max(a, b)/db (ties: 1/2 each)."""
    da = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    return da, 1.0 - da


def _min_grad(a, b):
    """d min(a, b)/da, d min(a, b)/db (ties: 1/2 each)."""
    da = np.where(a < b, 1.0, np.where(a == b, 0.5, 0.0))
    return da, 1.0 - da


def giou_loss(pred, target, eps=1e-10, reduction="none", weight=None):
    p, t = f64(pred), f64(target)
    x1, y1, x2, y2 = (p[..., i] for i in range(4))
    gx1, gy1, gx2, gy2 = (t[..., i] for i in range(4))
    # forward
    ix1, iy1, ix2, iy2 = np.maximum(x1, gx1), np.maximum(y1, gy1), np.minimum(x2, gx2), np.minimum(y2, gy2)
    wr, hr = ix2 - ix1, iy2 - iy1
    wi, hi = np.maximum(wr, 0), np.maximum(hr, 0)
    overlap = wi * hi
    area1, area2 = (x2 - x1) * (y2 - y1), (gx2 - gx1) * (gy2 - gy1)
    union = area1 + area2 - overlap + eps
    iou = overlap / union
    cx1, cy1, cx2, cy2 = np.minimum(x1, gx1), np.minimum(y1, gy1), np.maximum(x2, gx2), np.maximum(y2, gy2)
    area_c = (cx2 - cx1) * (cy2 - cy1) + eps
    elem = 1 - (iou - (area_c - union) / area_c)
    loss, w = weighted(elem, weight)
    value, scale = reduce(loss, reduction)
    # backward: elem = 1 - overlap/union + 1 - union/area_c
    up = scale * w
    d_union = up * (overlap / union ** 2 - 1 / area_c)
    d_area_c = up * union / area_c ** 2
    d_overlap = up * (-1 / union) - d_union
    d_wr = d_overlap * hi * (wr >= 0)
    d_hr = d_overlap * wi * (hr >= 0)
    gp = np.zeros_like(p)
    gt = np.zeros_like(t)
    # areas (through union)
    gp[..., 2] += d_union * (y2 - y1)
    gp[..., 0] -= d_union * (y2 - y1)
    gp[..., 3] += d_union * (x2 - x1)
    gp[..., 1] -= d_union * (x2 - x1)
    gt[..., 2] += d_union * (gy2 - gy1)
    gt[..., 0] -= d_union * (gy2 - gy1)
    gt[..., 3] += d_union * (gx2 - gx1)
    gt[..., 1] -= d_union * (gx2 - gx1)
    # intersection corners: wr = ix2 - ix1, hr = iy2 - iy1
    for i, (a, b, d, sign, grad_fn) in enumerate((
            (x1, gx1, d_wr, -1, _max_grad), (y1, gy1, d_hr, -1, _max_grad),
            (x2, gx2, d_wr, 1, _min_grad), (y2, gy2, d_hr, 1, _min_grad))):
        da, db = grad_fn(a, b)
        gp[..., i] += sign * d * da
        gt[..., i] += sign * d * db
    # enclosing box: area_c = (cx2 - cx1) (cy2 - cy1)
    d_cw, d_ch = d_area_c * (cy2 - cy1), d_area_c * (cx2 - cx1)
    for i, (a, b, d, sign, grad_fn) in enumerate((
            (x1, gx1, d_cw, -1, _min_grad), (y1, gy1, d_ch, -1, _min_grad),
            (x2, gx2, d_cw, 1, _max_grad), (y2, gy2, d_ch, 1, _max_grad))):
        da, db = grad_fn(a, b)
        gp[..., i] += sign * d * da
        gt[..., i] += sign * d * db
    grads = {"pred": gp, "target": gt}
    if weight is not None:
        grads["weight"] = unbroadcast(scale * elem, np.shape(weight))
    return value, grads
