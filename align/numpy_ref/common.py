"""Small float64 helpers shared by the NumPy references."""
import numpy as np


def f64(x):
    return np.asarray(x, dtype=np.float64)


def sigmoid(x):
    x = f64(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bce_with_logits(x, t):
    """-(t log s(x) + (1 - t) log(1 - s(x))), stable: max(x, 0) - x t + log(1 + e^-|x|)."""
    x, t = f64(x), f64(t)
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def reduce(loss, reduction):
    """The value and the derivative of the reduced value w.r.t. each element (a scalar)."""
    if reduction == "none":
        return loss, 1.0
    if reduction == "sum":
        return loss.sum(), 1.0
    if reduction == "mean":
        n = max(loss.size, 1)
        return loss.sum() / n, 1.0 / n
    raise ValueError(f"reduction must be one of ('none', 'mean', 'sum'), got {reduction!r}")


def unbroadcast(grad, shape):
    """Sum a gradient over the axes along which an input of `shape` was broadcast."""
    shape = tuple(shape)
    grad = np.asarray(grad)
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def weighted(loss, weight):
    """loss * weight and the broadcast weight (ones when weight is None)."""
    w = np.ones_like(loss) if weight is None else np.broadcast_to(f64(weight), loss.shape)
    return loss * w, w


def regression_result(elem, slope, weight, reduction):
    """Value and gradients of a loss of d = pred - target, from its elementwise value and d elem / d pred."""
    loss, w = weighted(elem, weight)
    value, scale = reduce(loss, reduction)
    g = scale * w * slope
    grads = {"pred": g, "target": -g}
    if weight is not None:
        grads["weight"] = unbroadcast(scale * elem, np.shape(weight))
    return value, grads
