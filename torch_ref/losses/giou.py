"""GIoU loss on x1y1x2y2 boxes, PaddleDetection's GIoULoss (eps inside union and enclosing area).

loss = 1 - (iou - (area_c - union) / area_c) per box, shape pred.shape[:-1] (torchvision's
generalized_box_iou_loss layout; PaddleDetection keeps a trailing 1). Ties in max/min split the
gradient in half and clamp(min=0) passes it at 0, in both frameworks.
"""
import torch
from torch import nn

from . import checks
from .reduction import weighted_reduce


def _check_boxes(pred, target, eps, weight, reduction):
    checks.check_number("eps", eps, 0)
    checks.check_reduction(reduction)
    checks.check_float("pred", pred)
    if pred.dim() < 1 or pred.shape[-1] != 4:
        raise ValueError(f"pred must have shape (..., 4), got {checks.shape_of(pred)}")
    checks.check_like("target", target, "pred", pred)
    checks.check_weight("weight", weight, "pred", pred.shape[:-1], pred)


def giou_loss(pred, target, eps=1e-10, reduction="none", weight=None):
    _check_boxes(pred, target, eps, weight, reduction)
    x1, y1, x2, y2 = pred[..., 0], pred[..., 1], pred[..., 2], pred[..., 3]
    x1g, y1g, x2g, y2g = target[..., 0], target[..., 1], target[..., 2], target[..., 3]
    w_inter = (torch.minimum(x2, x2g) - torch.maximum(x1, x1g)).clamp(min=0)
    h_inter = (torch.minimum(y2, y2g) - torch.maximum(y1, y1g)).clamp(min=0)
    overlap = w_inter * h_inter
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - overlap + eps
    iou = overlap / union
    area_c = (torch.maximum(x2, x2g) - torch.minimum(x1, x1g)) * (torch.maximum(y2, y2g) - torch.minimum(y1, y1g)) + eps
    loss = 1 - (iou - (area_c - union) / area_c)
    return weighted_reduce(loss, weight, reduction)


class GIoULoss(nn.Module):
    def __init__(self, eps=1e-10, reduction="none", loss_weight=1.0):
        super().__init__()
        checks.check_number("eps", eps, 0)
        checks.check_reduction(reduction)
        checks.check_number("loss_weight", loss_weight, 0)
        self.eps, self.reduction, self.loss_weight = eps, reduction, loss_weight

    def forward(self, pred, target, weight=None):
        return self.loss_weight * giou_loss(pred, target, self.eps, self.reduction, weight)
