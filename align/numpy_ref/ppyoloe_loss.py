"""PP-YOLOE's detection loss in float64 NumPy (values only), from ../shared/specs/ppyoloe.md A.5 and A.11.

Twins: torch_ref/losses/ppyoloe_loss.py and paddle_impl/losses/ppyoloe_loss.py. Built on this package's
varifocal, giou and dfl references; gradients are left to the frameworks' autograd (the tests compare them).
"""
import numpy as np

from .common import f64, sigmoid
from .dfl import distribution_focal_loss
from .giou import giou_loss
from .varifocal import varifocal_loss


def flatten(cls_logits, reg_logits):
    """Per level [B, C, h, w] / [B, 4 (reg_max + 1), h, w] -> sigmoid scores [B, L, C], bin logits [B, L, 68]."""
    scores = [sigmoid(c).reshape(c.shape[0], c.shape[1], -1).transpose(0, 2, 1) for c in cls_logits]
    distri = [f64(r).reshape(r.shape[0], r.shape[1], -1).transpose(0, 2, 1) for r in reg_logits]
    return np.concatenate(scores, 1), np.concatenate(distri, 1)


def decode(points, pred_distri, reg_max=16):
    """Expectation of the softmax over each side's bins (l, t, r, b), then x1y1 = p - lt, x2y2 = p + rb."""
    b, n, _ = pred_distri.shape
    bins = f64(pred_distri).reshape(b, n, 4, reg_max + 1)
    prob = np.exp(bins - bins.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    dist = (prob * np.arange(reg_max + 1)).sum(-1)
    return np.concatenate([points - dist[..., :2], points + dist[..., 2:]], -1)


def ppyoloe_loss(pred_scores, pred_distri, pred_bboxes, points, labels, assigned_bboxes, assigned_scores, strides,
                 num_classes=80, reg_max=16, loss_weight=(1.0, 2.5, 0.5)):
    """{loss, loss_cls, loss_iou, loss_dfl, loss_l1} as floats; points, pred_bboxes in grid units, boxes in pixels."""
    p, q, labels = f64(pred_scores), f64(assigned_scores), np.asarray(labels)
    gt = f64(assigned_bboxes) / f64(strides)
    one_hot = (labels[..., None] == np.arange(num_classes)).astype(np.float64)
    s = max(q.sum(), 1.0)
    loss_cls = varifocal_loss(p, q, one_hot)[0] / s
    pos = labels != num_classes
    if pos.any():
        w = q.sum(-1)[pos]
        pb, gb = f64(pred_bboxes)[pos], gt[pos]
        loss_l1 = np.abs(pb - gb).mean()
        loss_iou = giou_loss(pb, gb, reduction="sum", weight=w)[0] / s
        pts = np.broadcast_to(f64(points), gt.shape[:-1] + (2,))[pos]
        ltrb = np.clip(np.concatenate([pts - gb[:, :2], gb[:, 2:] - pts], -1), 0, reg_max - 0.01)
        dist = f64(pred_distri)[pos].reshape(-1, 4, reg_max + 1)
        loss_dfl = distribution_focal_loss(dist, ltrb, reg_max, weight=w[:, None], reduction="sum")[0] / s
    else:
        loss_l1 = loss_iou = loss_dfl = 0.0
    loss = loss_weight[0] * loss_cls + loss_weight[1] * loss_iou + loss_weight[2] * loss_dfl
    return {k: float(v) for k, v in (("loss", loss), ("loss_cls", loss_cls), ("loss_iou", loss_iou),
                                     ("loss_dfl", loss_dfl), ("loss_l1", loss_l1))}
