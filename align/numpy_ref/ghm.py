"""GHM-C and GHM-R written as mmdetection's per-bin loop (the definition the vectorised twins must equal).

The reference objects carry acc_sum (float64) across calls like the modules. `bins=` forces a given bin
assignment (one index per element, `num_bins` = no bin): loss_diff uses it to evaluate the definition on a
framework's own float32 binning when a rounding difference moved an element across an edge.
"""
import numpy as np

from .common import bce_with_logits, f64, sigmoid


def edges(num_bins, kind):
    """float32 arange(bins + 1) / bins; last edge + 1e-6 ('ghmc') or = 1e3 ('ghmr'); returned as float64."""
    e = np.arange(num_bins + 1, dtype=np.float32) / np.float32(num_bins)
    e[-1] = e[-1] + np.float32(1e-6) if kind == "ghmc" else np.float32(1e3)
    return e.astype(np.float64)


def assign_bins(g, valid, edge_values):
    """Loop definition: element in bin i iff edges[i] <= g < edges[i + 1] and valid; else num_bins."""
    num_bins = len(edge_values) - 1
    out = np.full(g.shape, num_bins, dtype=np.int64)
    for i in range(num_bins):
        out[(g >= edge_values[i]) & (g < edge_values[i + 1]) & valid] = i
    return out


def harmonizing_weights(bin_of, tot, acc_sum, momentum, num_bins):
    """mmdetection's loop: tot / num (or tot / acc_sum with momentum) per non-empty bin, / number of them."""
    weights = np.zeros(bin_of.shape)
    acc = acc_sum.copy()
    n = 0
    for i in range(num_bins):
        inds = bin_of == i
        num = int(inds.sum())
        if num > 0:
            if momentum > 0:
                acc[i] = momentum * acc[i] + (1 - momentum) * num
                weights[inds] = tot / acc[i]
            else:
                weights[inds] = tot / num
            n += 1
    if n > 0:
        weights = weights / n
    return weights, acc


def expand_labels(target, label_weight, num_classes):
    """Integer labels (N,) -> one-hot (N, C) (labels outside [0, C) are background); weight (N,) -> (N, C)."""
    target = np.asarray(target)
    if not np.issubdtype(target.dtype, np.floating):
        target = (target[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)
    lw = f64(label_weight)
    if lw.ndim == 1:
        lw = np.broadcast_to(lw[:, None], (lw.shape[0], num_classes))
    return f64(target), lw


class GHMCRef:
    def __init__(self, bins=10, momentum=0.0, loss_weight=1.0):
        self.num_bins, self.momentum, self.loss_weight = bins, momentum, loss_weight
        self.edges = edges(bins, "ghmc")
        self.acc_sum = np.zeros(bins)

    def gradient_length(self, pred, target, label_weight):
        t, lw = expand_labels(target, label_weight, np.shape(pred)[1])
        return np.abs(sigmoid(pred) - t), lw > 0

    def __call__(self, pred, target, label_weight, bins=None):
        """-> (loss, grads, state, bin index per element)."""
        x = f64(pred)
        t, lw = expand_labels(target, label_weight, x.shape[1])
        g, valid = self.gradient_length(x, target, label_weight)
        bin_of = assign_bins(g, valid, self.edges) if bins is None else np.where(valid, bins, self.num_bins)
        tot = max(float(valid.sum()), 1.0)
        w, self.acc_sum = harmonizing_weights(bin_of, tot, self.acc_sum, self.momentum, self.num_bins)
        loss = (bce_with_logits(x, t) * w).sum() / tot * self.loss_weight
        grads = {"pred": (sigmoid(x) - t) * w / tot * self.loss_weight,
                 "label_weight": np.zeros(np.shape(label_weight))}
        if np.issubdtype(np.asarray(target).dtype, np.floating):
            grads["target"] = np.zeros_like(t)
        return loss, grads, {"acc_sum": self.acc_sum.copy()}, bin_of


class GHMRRef:
    def __init__(self, mu=0.02, bins=10, momentum=0.0, loss_weight=1.0):
        self.mu, self.num_bins, self.momentum, self.loss_weight = mu, bins, momentum, loss_weight
        self.edges = edges(bins, "ghmr")
        self.acc_sum = np.zeros(bins)

    def gradient_length(self, pred, target, label_weight):
        d = f64(pred) - f64(target)
        return np.abs(d / np.sqrt(self.mu * self.mu + d * d)), f64(label_weight) > 0

    def __call__(self, pred, target, label_weight, bins=None):
        d = f64(pred) - f64(target)
        lw = f64(label_weight)
        mu = self.mu
        g, valid = self.gradient_length(pred, target, label_weight)
        bin_of = assign_bins(g, valid, self.edges) if bins is None else np.where(valid, bins, self.num_bins)
        tot = max(lw.sum(), 1.0)
        w, self.acc_sum = harmonizing_weights(bin_of, tot, self.acc_sum, self.momentum, self.num_bins)
        root = np.sqrt(d * d + mu * mu)
        loss = ((root - mu) * w).sum() / tot * self.loss_weight
        dpred = d / root * w / tot * self.loss_weight
        grads = {"pred": dpred, "target": -dpred, "label_weight": np.zeros_like(lw)}
        return loss, grads, {"acc_sum": self.acc_sum.copy()}, bin_of
