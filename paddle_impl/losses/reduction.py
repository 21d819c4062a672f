"""Reduction of an elementwise loss; 'mean' of an empty loss is 0 (a batch without positives), not NaN."""
import math

import paddle

from .checks import check_reduction


def accurate_sum(x):
    """x.sum() with a float64 accumulator for float32 (and lower) inputs, returned in x's dtype.

    Paddle 3.3.1 defect: its CPU float32 sum is less accurate than torch's cascade sum on long reductions
    (its error grows faster from ~5k elements on): over RetinaNet's 154k focal-loss terms it is 3.5
    float32 ulps of the result off where torch's is within half an ulp, which made the float32 loss 45x
    torch's noise floor in backward_diff; the float64-accumulated sum is correctly rounded
    (tests/test_float32_sensitivity.py::test_paddle_float32_sum_defect_is_still_there). float64 inputs
    are summed as they are."""
    if x.dtype in (paddle.float32, paddle.float16, paddle.bfloat16):
        return x.sum(dtype="float64").astype(x.dtype)
    return x.sum()


def reduce_loss(loss, reduction):
    check_reduction(reduction)
    if reduction == "none":
        return loss
    total = accurate_sum(loss)
    return total / max(math.prod(loss.shape), 1) if reduction == "mean" else total


def weighted_reduce(loss, weight, reduction):
    return reduce_loss(loss if weight is None else loss * weight, reduction)
