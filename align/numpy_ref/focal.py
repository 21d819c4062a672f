"""Sigmoid focal loss (torchvision definition) with an element weight; analytic gradients."""
import numpy as np

from .common import bce_with_logits, f64, reduce, sigmoid, unbroadcast, weighted


def sigmoid_focal_loss(pred, target, weight=None, alpha=0.25, gamma=2.0, reduction="sum"):
    x, t = f64(pred), f64(target)
    p = sigmoid(x)
    ce = bce_with_logits(x, t)
    one_minus_pt = 1 - (p * t + (1 - p) * (1 - t))
    mod = one_minus_pt ** gamma
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else np.ones_like(x)
    unweighted = a_t * ce * mod
    loss, w = weighted(unweighted, weight)
    value, scale = reduce(loss, reduction)
    # d(1 - p_t)/dx = -(2t - 1) p (1 - p); d ce/dx = p - t
    dmod = gamma * one_minus_pt ** (gamma - 1) * (-(2 * t - 1) * p * (1 - p))
    grads = {"pred": scale * a_t * w * ((p - t) * mod + ce * dmod), "target": np.zeros_like(t)}
    if weight is not None:
        grads["weight"] = unbroadcast(scale * unweighted, np.shape(weight))
    return value, grads
