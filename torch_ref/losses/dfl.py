"""Distribution focal loss, PP-YOLOE's `_df_loss`: cross entropy to the two integers around the target.

pred_dist (..., reg_max + 1) logits, target (...) distances in [0, reg_max). Returns the per-row mean over
the last target dimension with keepdim (PP-YOLOE: (P, 4) targets -> (P, 1)). The target is detached and
its weights are computed in the input dtype (PaddleDetection hard-codes float32 there).
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .reduction import weighted_reduce


def distribution_focal_loss(pred_dist, target, reg_max=16, weight=None, reduction="none"):
    checks.check_int("reg_max", reg_max, 1)
    checks.check_reduction(reduction)
    checks.check_float("pred_dist", pred_dist)
    if pred_dist.dim() < 2 or pred_dist.shape[-1] != reg_max + 1:
        raise ValueError(f"pred_dist must have shape (..., reg_max + 1 = {reg_max + 1}), "
                         f"got {checks.shape_of(pred_dist)}")
    checks.check_like("target", target, "pred_dist", pred_dist, same_shape=False)
    checks.check_shape("target", target, checks.shape_of(pred_dist)[:-1])
    checks.check_values("target", target, 0.0, float(reg_max), high_inclusive=False)
    out_shape = checks.shape_of(target)[:-1] + (1,)
    checks.check_weight("weight", weight, "pred_dist", out_shape, pred_dist)
    target = target.detach()
    left = target.to(torch.int64)
    weight_left = (left + 1).to(target.dtype) - target
    weight_right = 1 - weight_left
    logp = F.log_softmax(pred_dist, dim=-1)
    nll_left = -logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    nll_right = -logp.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    loss = (nll_left * weight_left + nll_right * weight_right).mean(-1, keepdim=True)
    return weighted_reduce(loss, weight, reduction)


class DFLoss(nn.Module):
    def __init__(self, reg_max=16, reduction="none", loss_weight=1.0):
        super().__init__()
        checks.check_int("reg_max", reg_max, 1)
        checks.check_reduction(reduction)
        checks.check_number("loss_weight", loss_weight, 0)
        self.reg_max, self.reduction, self.loss_weight = reg_max, reduction, loss_weight

    def forward(self, pred_dist, target, weight=None):
        return self.loss_weight * distribution_focal_loss(pred_dist, target, self.reg_max, weight, self.reduction)
