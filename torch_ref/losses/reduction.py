"""Reduction of an elementwise loss; 'mean' of an empty loss is 0 (a batch without positives), not NaN."""
from .checks import check_reduction


def reduce_loss(loss, reduction):
    check_reduction(reduction)
    if reduction == "none":
        return loss
    total = loss.sum()
    return total / max(loss.numel(), 1) if reduction == "mean" else total


def weighted_reduce(loss, weight, reduction):
    return reduce_loss(loss if weight is None else loss * weight, reduction)
