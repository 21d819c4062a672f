"""Balanced L1 loss (Libra R-CNN, mmdetection definition) with an optional element weight.

b = e^(gamma/alpha) - 1; |d| < beta: alpha/b (b|d| + 1) ln(b|d|/beta + 1) - alpha|d|, else
gamma|d| + gamma/b - alpha beta. No positives (empty inputs) gives 0, not an error.
"""
import math

import paddle
from paddle import nn

from . import checks
from .reduction import weighted_reduce


def balanced_l1_loss(pred, target, alpha=0.5, gamma=1.5, beta=1.0, weight=None, reduction="sum"):
    for name, value in (("alpha", alpha), ("gamma", gamma), ("beta", beta)):
        checks.check_positive(name, value)
    checks.check_pair(pred, target, weight, reduction)
    diff = (pred - target).abs()
    b = math.e ** (gamma / alpha) - 1
    loss = paddle.where(diff < beta,
                        alpha / b * (b * diff + 1) * paddle.log(b * diff / beta + 1) - alpha * diff,
                        gamma * diff + gamma / b - alpha * beta)
    return weighted_reduce(loss, weight, reduction)


class BalancedL1Loss(nn.Layer):
    def __init__(self, alpha=0.5, gamma=1.5, beta=1.0, reduction="sum", loss_weight=1.0):
        super().__init__()
        for name, value in (("alpha", alpha), ("gamma", gamma), ("beta", beta)):
            checks.check_positive(name, value)
        checks.check_reduction(reduction)
        checks.check_number("loss_weight", loss_weight, 0)
        self.alpha, self.gamma, self.beta = alpha, gamma, beta
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred, target, weight=None):
        return self.loss_weight * balanced_l1_loss(pred, target, self.alpha, self.gamma, self.beta, weight,
                                                   self.reduction)
