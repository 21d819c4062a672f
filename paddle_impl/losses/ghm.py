"""GHM-C and GHM-R (Gradient Harmonized Single-stage Detector), mmdetection semantics, binned in one pass.

Bins use float32 edges arange(bins + 1) / bins (last edge + 1e-6 for GHM-C, 1e3 for GHM-R) cast to the
input dtype; element i lands in bin k iff edges[k] <= g < edges[k + 1] (bucketize, right=True). Counts come
from one put_along_axis(reduce='add'), so there is no per-bin loop and no host sync. Bin index `bins` means
"no bin" (ignored element): it indexes an extra slot of weight 0.

State: `acc_sum` (zeros(bins)) is a persistable registered buffer and appears in the state_dict. It is kept
in the dtype of the predictions that last updated it (the momentum update runs in the input dtype and
replaces the buffer), so a float64 run never rounds its state to float32. With momentum 0 it stays zero.
"""
import paddle
import paddle.nn.functional as F
from paddle import nn

from . import checks
from .bce import bce_with_logits


def float32_edges(bins, last):
    """mmdetection's edges: float32 arange(bins + 1) / bins, the last one replaced by `last(edges[-1])`."""
    edges = paddle.arange(bins + 1, dtype="float32") / bins
    edges[-1] = last(edges[-1])
    return edges


def bin_index(g, edges, valid):
    """Bin of each element (edges[k] <= g < edges[k+1]); len(edges) - 1 for invalid or out-of-range ones."""
    bins = edges.shape[0] - 1
    idx = paddle.bucketize(g, edges.astype(g.dtype), right=True) - 1
    inside = valid & (idx >= 0) & (idx < bins)
    return paddle.where(inside, idx, paddle.full_like(idx, bins))


def harmonizing_weights(idx, bins, tot, acc_sum, momentum):
    """Per-element weights tot / num_in_bin (or tot / acc_sum with momentum), divided by the number of
    non-empty bins, and the updated acc_sum. All inputs are detached; tot and acc_sum carry the dtype."""
    flat = idx.reshape([-1])
    counts = paddle.put_along_axis(paddle.zeros([bins + 1], dtype="int64"), flat, paddle.ones_like(flat), 0,
                                   reduce="add")
    nonempty = counts[:bins] > 0
    num = counts[:bins].astype(tot.dtype)
    zero = paddle.zeros_like(num)
    if momentum > 0:
        acc_sum = paddle.where(nonempty, momentum * acc_sum + (1 - momentum) * num, acc_sum)
        per_bin = paddle.where(nonempty, tot / paddle.where(nonempty, acc_sum, paddle.ones_like(num)), zero)
    else:
        per_bin = paddle.where(nonempty, tot / paddle.where(nonempty, num, paddle.ones_like(num)), zero)
    per_bin = per_bin / nonempty.sum().astype(tot.dtype).clip(min=1)
    per_bin = paddle.concat([per_bin, zero[:1]])      # the "no bin" slot
    return paddle.gather(per_bin, flat).reshape(idx.shape), acc_sum


def _check_config(bins, momentum):
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")


class _GHMBase(nn.Layer):
    def __init__(self, bins, momentum, loss_weight, last_edge):
        super().__init__()
        _check_config(bins, momentum)
        self.bins, self.momentum, self.loss_weight = bins, float(momentum), loss_weight
        self.register_buffer("edges", float32_edges(bins, last_edge), persistable=False)
        self.register_buffer("acc_sum", paddle.zeros([bins], dtype="float32"), persistable=True)

    def _weights(self, g, valid, tot):
        idx = bin_index(g, self.edges, valid)
        weights, acc_sum = harmonizing_weights(idx, self.bins, tot, self.acc_sum.astype(tot.dtype), self.momentum)
        if self.momentum > 0:
            self.acc_sum = acc_sum
        return weights


class GHMC(_GHMBase):
    """GHM-C(bins=10, momentum=0, use_sigmoid=True, loss_weight=1.0).

    forward(pred (N, C) logits, target, label_weight): target is float (N, C) in [0, 1] or integer labels
    (N,) (labels in [0, C) are classes, anything else background -> all-zero row); label_weight is (N, C)
    or (N,) (broadcast over classes). tot = number of elements with label_weight > 0 (at least 1).
    """

    def __init__(self, bins=10, momentum=0.0, use_sigmoid=True, loss_weight=1.0):
        if not use_sigmoid:
            raise ValueError("use_sigmoid must be True (GHM-C is defined on sigmoid BCE only)")
        super().__init__(bins, momentum, loss_weight, last_edge=lambda e: e + 1e-6)
        self.use_sigmoid = True

    def _prepare(self, pred, target, label_weight):
        checks.check_float("pred", pred, ndim=2)
        n, c = checks.shape_of(pred)
        checks.check_tensor("target", target)
        if paddle.is_floating_point(target):
            checks.check_like("target", target, "pred", pred)
            checks.check_range("target", target, 0.0, 1.0)
        else:
            checks.check_integer("target", target, ndim=1)
            if target.shape[0] != n:
                raise ValueError(f"target labels must have shape ({n},), got {checks.shape_of(target)}")
            target = (target.unsqueeze(1) == paddle.arange(c, dtype=target.dtype)).astype(pred.dtype)
        checks.check_like("label_weight", label_weight, "pred", pred, same_shape=False)
        if checks.shape_of(label_weight) == (n,):
            label_weight = label_weight.unsqueeze(1).expand([n, c])
        elif checks.shape_of(label_weight) != (n, c):
            raise ValueError(f"label_weight must have shape ({n}, {c}) or ({n},), got {checks.shape_of(label_weight)}")
        checks.check_range("label_weight", label_weight, low=0.0)
        return target.detach(), label_weight.detach()

    def _bins(self, pred, target, label_weight):
        g = (F.sigmoid(pred.detach()) - target).abs()
        return g, label_weight > 0

    def bin_index(self, pred, target, label_weight):
        """Bin of every (anchor, class) element as forward assigns it (`bins` = ignored)."""
        target, label_weight = self._prepare(pred, target, label_weight)
        g, valid = self._bins(pred, target, label_weight)
        return bin_index(g, self.edges, valid)

    def forward(self, pred, target, label_weight):
        target, label_weight = self._prepare(pred, target, label_weight)
        g, valid = self._bins(pred, target, label_weight)
        tot = valid.sum().astype(pred.dtype).clip(min=1)
        weights = self._weights(g, valid, tot)
        loss = (bce_with_logits(pred, target) * weights).sum() / tot
        return loss * self.loss_weight


class GHMR(_GHMBase):
    """GHM-R(mu=0.02, bins=10, momentum=0, loss_weight=1.0) on ASL1 = sqrt(d^2 + mu^2) - mu.

    forward(pred, target, label_weight), all of one shape (N, 4); g = |d| / sqrt(d^2 + mu^2) (detached);
    tot = sum of label_weight (at least 1). label_weight only selects elements (> 0); it gets no gradient.
    """

    def __init__(self, mu=0.02, bins=10, momentum=0.0, loss_weight=1.0):
        checks.check_positive("mu", mu)
        super().__init__(bins, momentum, loss_weight, last_edge=lambda e: paddle.full_like(e, 1e3))
        self.mu = mu

    def _prepare(self, pred, target, label_weight):
        checks.check_float("pred", pred)
        checks.check_like("target", target, "pred", pred)
        checks.check_like("label_weight", label_weight, "pred", pred)
        checks.check_range("label_weight", label_weight, low=0.0)
        return label_weight.detach()

    def _bins(self, diff, label_weight):
        mu = self.mu
        g = paddle.abs(diff / paddle.sqrt(mu * mu + diff * diff)).detach()
        return g, label_weight > 0

    def bin_index(self, pred, target, label_weight):
        label_weight = self._prepare(pred, target, label_weight)
        g, valid = self._bins(pred.detach() - target.detach(), label_weight)
        return bin_index(g, self.edges, valid)

    def forward(self, pred, target, label_weight):
        label_weight = self._prepare(pred, target, label_weight)
        mu = self.mu
        diff = pred - target
        loss = paddle.sqrt(diff * diff + mu * mu) - mu
        g, valid = self._bins(diff, label_weight)
        tot = label_weight.sum().clip(min=1)
        weights = self._weights(g, valid, tot)
        return (loss * weights).sum() / tot * self.loss_weight
