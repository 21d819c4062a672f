"""Smooth L1 and L1 losses (mmdetection definitions) with an optional element weight."""
import paddle
from paddle import nn

from . import checks
from .reduction import weighted_reduce


def smooth_l1_loss(pred, target, beta=1.0, weight=None, reduction="sum"):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (d = pred - target; beta > 0)."""
    checks.check_positive("beta", beta)
    checks.check_pair(pred, target, weight, reduction)
    diff = (pred - target).abs()
    loss = paddle.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return weighted_reduce(loss, weight, reduction)


def l1_loss(pred, target, weight=None, reduction="sum"):
    checks.check_pair(pred, target, weight, reduction)
    return weighted_reduce((pred - target).abs(), weight, reduction)


class SmoothL1Loss(nn.Layer):
    def __init__(self, beta=1.0, reduction="sum", loss_weight=1.0):
        super().__init__()
        checks.check_positive("beta", beta)
        checks.check_reduction(reduction)
        checks.check_number("loss_weight", loss_weight, 0)
        self.beta, self.reduction, self.loss_weight = beta, reduction, loss_weight

    def forward(self, pred, target, weight=None):
        return self.loss_weight * smooth_l1_loss(pred, target, self.beta, weight, self.reduction)


class L1Loss(nn.Layer):
    def __init__(self, reduction="sum", loss_weight=1.0):
        super().__init__()
        checks.check_reduction(reduction)
        checks.check_number("loss_weight", loss_weight, 0)
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred, target, weight=None):
        return self.loss_weight * l1_loss(pred, target, weight, self.reduction)
