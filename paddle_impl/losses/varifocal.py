"""Varifocal loss on probabilities, as PP-YOLOE (PaddleDetection `_varifocal_loss`) computes it.

weight = alpha p^gamma (1 - label) + q label; loss = sum(weight * BCE(p, q)). As in PaddleDetection (whose
Paddle BCE passes gradient into its `weight`), the weight is NOT detached: gradient flows through p^gamma.
q (gt_score) and label are targets and are detached.

BCE on probabilities is written out (bce.py): logs floored at -100 as both frameworks' kernels do, with the
derivative of that function as gradient.
"""
import paddle
from paddle import nn

from . import checks
from .bce import bce_on_probabilities
from .reduction import accurate_sum


def check_config(alpha, gamma):
    checks.check_number("alpha", alpha, 0)
    checks.check_number("gamma", gamma, 0)


def varifocal_loss(pred_score, gt_score, label, alpha=0.75, gamma=2.0):
    """pred_score: probabilities (..., C); gt_score: IoU targets q in [0, 1]; label: one-hot (float/int)."""
    check_config(alpha, gamma)
    checks.check_float("pred_score", pred_score, low=0.0, high=1.0)
    checks.check_like("gt_score", gt_score, "pred_score", pred_score, low=0.0, high=1.0)
    checks.check_tensor("label", label)
    if paddle.is_floating_point(label):
        checks.check_like("label", label, "pred_score", pred_score)
    else:
        checks.check_integer("label", label)
        checks.check_shape("label", label, checks.shape_of(pred_score),
                           f"{checks.shape_of(pred_score)} (the shape of pred_score)")
        label = label.astype(pred_score.dtype)
    checks.check_values("label", label, 0.0, 1.0)
    gt_score, label = gt_score.detach(), label.detach()
    weight = alpha * pred_score.pow(gamma) * (1 - label) + gt_score * label
    return accurate_sum(bce_on_probabilities(pred_score, gt_score) * weight)


class VarifocalLoss(nn.Layer):
    def __init__(self, alpha=0.75, gamma=2.0, loss_weight=1.0):
        super().__init__()
        check_config(alpha, gamma)
        checks.check_number("loss_weight", loss_weight, 0)
        self.alpha, self.gamma, self.loss_weight = alpha, gamma, loss_weight

    def forward(self, pred_score, gt_score, label):
        return self.loss_weight * varifocal_loss(pred_score, gt_score, label, self.alpha, self.gamma)
