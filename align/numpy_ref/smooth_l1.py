"""Smooth L1 and L1 losses (mmdetection definitions) with an element weight; analytic gradients."""
import numpy as np

from .common import f64, regression_result


def smooth_l1_loss(pred, target, beta=1.0, weight=None, reduction="sum"):
    d = f64(pred) - f64(target)
    a = np.abs(d)
    inner = a < beta
    elem = np.where(inner, 0.5 * a * a / beta, a - 0.5 * beta)
    slope = np.where(inner, a / beta, 1.0) * np.sign(d)
    return regression_result(elem, slope, weight, reduction)


def l1_loss(pred, target, weight=None, reduction="sum"):
    d = f64(pred) - f64(target)
    return regression_result(np.abs(d), np.sign(d), weight, reduction)
