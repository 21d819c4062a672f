"""Varifocal loss on probabilities (PP-YOLOE): sum(w * BCE(p, q)), w = alpha p^gamma (1 - label) + q label.

BCE floors each log at -100 (log 0 = -100); the gradient is the derivative of that function, so a floored
log contributes 0. The weight is not detached: dw/dp = alpha gamma p^(gamma-1) (1 - label).
"""
import numpy as np

from .common import f64

LOG_FLOOR = -100.0


def _clamped_log(x):
    """(max(log x, -100), d/dx of it): 1/x where log x >= -100, else 0."""
    with np.errstate(divide="ignore"):
        log = np.log(np.where(x > 0, x, 1.0))
    kept = (x > 0) & (log >= LOG_FLOOR)
    return np.where(kept, log, LOG_FLOOR), np.where(kept, 1.0 / np.where(kept, x, 1.0), 0.0)


def varifocal_loss(pred_score, gt_score, label, alpha=0.75, gamma=2.0):
    p, q, lab = f64(pred_score), f64(gt_score), f64(label)
    log_p, dlog_p = _clamped_log(p)
    log_1mp, dlog_1mp = _clamped_log(1 - p)
    bce = -(q * log_p + (1 - q) * log_1mp)
    dbce = -(q * dlog_p - (1 - q) * dlog_1mp)
    w = alpha * p ** gamma * (1 - lab) + q * lab
    dw = alpha * gamma * p ** (gamma - 1) * (1 - lab)
    grads = {"pred_score": dw * bce + w * dbce, "gt_score": np.zeros_like(q), "label": np.zeros_like(lab)}
    return (w * bce).sum(), grads
