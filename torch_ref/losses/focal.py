"""Sigmoid focal loss (RetinaNet): torchvision.ops.sigmoid_focal_loss plus an optional element weight."""
from torch import nn

from . import checks
from .bce import bce_with_logits
from .reduction import weighted_reduce


def check_config(alpha, gamma):
    """alpha in [0, 1], or -1: torchvision's "no class balance" (any other negative is a mistake); gamma >= 0."""
    if alpha != -1 and not checks.in_range(alpha, 0, 1):
        raise ValueError(f"alpha must be a finite number in [0, 1] (or -1: no class balance), got {alpha!r}")
    checks.check_number("gamma", gamma, 0)


def sigmoid_focal_loss(pred, target, weight=None, alpha=0.25, gamma=2.0, reduction="sum"):
    """pred: logits (N, C); target: float one-hot (or soft) targets in [0, 1]; weight broadcasts to (N, C).

    alpha = -1 disables the class balance factor (torchvision convention). The target is a label and is
    detached (Paddle's BCE kernel has no gradient for it either); the modulating factor is not detached.
    """
    check_config(alpha, gamma)
    checks.check_reduction(reduction)
    checks.check_float("pred", pred)
    checks.check_like("target", target, "pred", pred, low=0.0, high=1.0)
    checks.check_weight("weight", weight, "pred", pred.shape, pred)
    target = target.detach()
    p = pred.sigmoid()
    ce = bce_with_logits(pred, target)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return weighted_reduce(loss, weight, reduction)


class FocalLoss(nn.Module):
    def __init__(self, alpha=0.25, gamma=2.0, reduction="sum", loss_weight=1.0):
        super().__init__()
        check_config(alpha, gamma)
        checks.check_reduction(reduction)
        checks.check_number("loss_weight", loss_weight, 0)
        self.alpha, self.gamma, self.reduction, self.loss_weight = alpha, gamma, reduction, loss_weight

    def forward(self, pred, target, weight=None):
        return self.loss_weight * sigmoid_focal_loss(pred, target, weight, self.alpha, self.gamma, self.reduction)
