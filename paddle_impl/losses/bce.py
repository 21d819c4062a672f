"""Elementwise binary cross entropy written out, so both twins compute the same function and gradient.

Why not the frameworks' kernels: Paddle 3.3.1's binary_cross_entropy_with_logits returns the gradient
sigmoid(x) - t - 1 at exactly x = 0 (-0.5 instead of 0.5 for t = 0; torch is right), and its BCE on
probabilities uses log(1 - p) and a float64 1e-12 where torch uses log1p(-p) and a float32 1e-12.
"""
import paddle

LOG_FLOOR = -100.0


def bce_with_logits(x, t):
    """softplus(x) - x t, stable: log(1 + e^-|x|) + (x >= 0 ? x (1 - t) : -x t).

    |x| is where(x >= 0, x, -x) so the gradient at x = 0 comes from one branch: sigmoid(0) - t (abs()
    would give it slope 0 there and lose the 1/2).
    """
    nonneg = x >= 0
    a = paddle.where(nonneg, x, -x)
    return paddle.log1p(paddle.exp(-a)) + paddle.where(nonneg, x * (1 - t), -x * t)


def clamped_log(x):
    """max(log x, -100), with log 0 = -100 and a zero (not NaN) gradient there."""
    positive = x > 0
    safe = paddle.where(positive, x, paddle.ones_like(x))
    return paddle.where(positive, paddle.log(safe), paddle.full_like(x, LOG_FLOOR)).clip(min=LOG_FLOOR)


def bce_on_probabilities(p, q):
    """-(q log p + (1 - q) log(1 - p)), each log floored at -100 like both frameworks' BCE kernels.

    The gradient is the derivative of this function (0 through a floored log); the kernels' own backward
    (p - q) / max(p (1 - p), 1e-12) differs only within 1e-12 of p = 0 or 1.
    """
    return -(q * clamped_log(p) + (1 - q) * clamped_log(1 - p))
