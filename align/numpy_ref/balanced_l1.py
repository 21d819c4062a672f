"""Balanced L1 loss (Libra R-CNN, mmdetection definition) with an element weight; analytic gradients."""
import numpy as np

from .common import f64, regression_result


def balanced_l1_loss(pred, target, alpha=0.5, gamma=1.5, beta=1.0, weight=None, reduction="sum"):
    """Libra R-CNN: b = e^(gamma/alpha) - 1; inside |d| < beta the loss integrates alpha ln(b|d|/beta + 1)."""
    d = f64(pred) - f64(target)
    a = np.abs(d)
    b = np.e ** (gamma / alpha) - 1
    inner = a < beta
    log_term = np.log(b * a / beta + 1)
    elem = np.where(inner, alpha / b * (b * a + 1) * log_term - alpha * a, gamma * a + gamma / b - alpha * beta)
    inner_slope = alpha / b * (b * log_term + (b * a + 1) * (b / beta) / (b * a / beta + 1)) - alpha
    slope = np.where(inner, inner_slope, gamma) * np.sign(d)
    return regression_result(elem, slope, weight, reduction)
