"""GHM-C and GHM-R (Gradient Harmonized Single-stage Detector), mmdetection semantics, binned in one pass.

Bins use float32 edges arange(bins + 1) / bins (last edge + 1e-6 for GHM-C, 1e3 for GHM-R) cast to the
input dtype; element i lands in bin k iff edges[k] <= g < edges[k + 1]. bin_index finds k without a search
(see there); counts come from one bincount, so there is no per-bin loop and no host sync. Bin index `bins`
means "no bin" (ignored element): it indexes an extra slot of weight 0.

GHM-C's gradient w.r.t. the logits is the closed form (sigmoid(pred) - target) * weight / tot, from the
sigmoid the binning needs anyway (a torch.autograd.Function): autograd through a written-out BCE would cost
several passes more over anchors x classes.

State: `acc_sum` (zeros(bins)) is a registered buffer and appears in the state_dict. It is kept in the
dtype of the predictions that last updated it (the momentum update runs in the input dtype and replaces the
buffer), so a float64 run never rounds its state to float32. With momentum 0 it stays zero.
"""
import torch
from torch import nn

from . import checks

IGNORED_G = 3.0      # ignored elements get g >= this: beyond every edge, so bin_index sends them to "no bin"
SHRINK = 1 - 2.0 ** -20


def float32_edges(bins, last):
    """mmdetection's edges: float32 arange(bins + 1) / bins, the last one replaced by `last(edges[-1])`."""
    edges = torch.arange(bins + 1, dtype=torch.float32) / bins
    edges[-1] = last(edges[-1])
    return edges


def upper_edges(edges):
    """bin_index's lookup table: upper[m] = edges[m + 1] for m < bins, +inf beyond (up to IGNORED_G's reach)."""
    bins = edges.numel() - 1
    upper = torch.full((int((IGNORED_G + 1) * bins) + 2,), float("inf"))
    upper[:bins] = edges[1:]
    return upper


def bin_index(g, upper, bins, valid):
    """Bin k of each element (edges[k] <= g < edges[k + 1]); `bins` for ignored elements and g >= the last edge.

    For 0 <= g <= 1 and edges[k] = float32(k / bins) (k < bins), j = floor(g * bins * (1 - 2^-20)) is k or
    k - 1: the factor 1 - 2^-20 outweighs the float32 rounding of the edges and of the product (2^-23), so j
    never passes k, and it is too close to 1 to lose a whole bin. One comparison with the next edge, upper[j],
    settles it: exact in both dtypes, with no search. Ignored elements are moved to g >= IGNORED_G, whose j points
    past the table's edges (+inf); the clamp sends them, and g >= the last edge, to `bins`.
    """
    g = torch.where(valid, g, IGNORED_G)
    j = (g * (bins * SHRINK)).long()                        # truncation = floor, as g >= 0
    j += g >= torch.take(upper.to(g.dtype), j)
    return j.clamp_(max=bins)


def harmonizing_weights(idx, bins, tot, acc_sum, momentum):
    """Per-element weights tot / num_in_bin (or tot / acc_sum with momentum), divided by the number of
    non-empty bins, and the updated acc_sum. All inputs are detached; tot and acc_sum carry the dtype."""
    counts = torch.bincount(idx.reshape(-1), minlength=bins + 1)
    nonempty = counts[:bins] > 0
    num = counts[:bins].to(tot.dtype)
    zero = torch.zeros_like(num)
    if momentum > 0:
        acc_sum = torch.where(nonempty, momentum * acc_sum + (1 - momentum) * num, acc_sum)
    denom = acc_sum if momentum > 0 else num
    per_bin = torch.where(nonempty, tot / torch.where(nonempty, denom, torch.ones_like(num)), zero)
    per_bin = per_bin / nonempty.sum().to(tot.dtype).clamp(min=1)
    per_bin = torch.cat([per_bin, zero[:1]])          # the "no bin" slot
    return torch.take(per_bin, idx), acc_sum


class HarmonizedBCE(torch.autograd.Function):
    """sum(weight * BCE-with-logits(pred, target)) / tot; gradient w.r.t. pred only, in closed form from
    diff = sigmoid(pred) - target: diff * weight / tot. weight, diff and tot are detached.

    BCE = log1p(exp(-|x|)) + (relu(x) - x t): accurate for confident logits (1 + e^-|x| is never rounded)."""

    @staticmethod
    def forward(ctx, pred, target, diff, weight, tot):
        ctx.save_for_backward(diff, weight, tot)
        bce = torch.log1p(torch.exp(-pred.abs()))
        bce += pred.relu() - pred * target
        return (weight * bce).sum() / tot

    @staticmethod
    def backward(ctx, grad_out):
        diff, weight, tot = ctx.saved_tensors
        return diff * weight * (grad_out / tot), None, None, None, None


def _check_config(bins, momentum):
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")


class _GHMBase(nn.Module):
    def __init__(self, bins, momentum, loss_weight, last_edge):
        super().__init__()
        _check_config(bins, momentum)
        self.bins, self.momentum, self.loss_weight = bins, float(momentum), loss_weight
        self.register_buffer("edges", float32_edges(bins, last_edge), persistent=False)
        self.register_buffer("upper", upper_edges(self.edges), persistent=False)
        self.register_buffer("acc_sum", torch.zeros(bins))

    def _weights(self, g, valid, tot):
        idx = bin_index(g, self.upper, self.bins, valid)
        weights, acc_sum = harmonizing_weights(idx, self.bins, tot, self.acc_sum.to(tot.dtype), self.momentum)
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
        if target.is_floating_point():
            checks.check_like("target", target, "pred", pred)
            checks.check_range("target", target, 0.0, 1.0)
        else:
            checks.check_integer("target", target, ndim=1)
            if target.shape[0] != n:
                raise ValueError(f"target labels must have shape ({n},), got {checks.shape_of(target)}")
            target = (target.unsqueeze(1) == torch.arange(c, device=target.device)).to(pred.dtype)
        checks.check_like("label_weight", label_weight, "pred", pred, same_shape=False)
        if checks.shape_of(label_weight) == (n,):
            label_weight = label_weight.unsqueeze(1).expand(n, c)
        elif checks.shape_of(label_weight) != (n, c):
            raise ValueError(f"label_weight must have shape ({n}, {c}) or ({n},), got {checks.shape_of(label_weight)}")
        checks.check_range("label_weight", label_weight, low=0.0)
        return target.detach(), label_weight.detach()

    def bin_index(self, pred, target, label_weight):
        """Bin of every (anchor, class) element as forward assigns it (`bins` = ignored)."""
        target, label_weight = self._prepare(pred, target, label_weight)
        g = (pred.detach().sigmoid() - target).abs()
        return bin_index(g, self.upper, self.bins, label_weight > 0)

    def forward(self, pred, target, label_weight):
        target, label_weight = self._prepare(pred, target, label_weight)
        diff = pred.detach().sigmoid() - target          # g = |diff|; also the BCE's gradient
        valid = label_weight > 0
        tot = valid.sum().to(pred.dtype).clamp(min=1)
        weights = self._weights(diff.abs(), valid, tot)
        return HarmonizedBCE.apply(pred, target, diff, weights, tot) * self.loss_weight


class GHMR(_GHMBase):
    """GHM-R(mu=0.02, bins=10, momentum=0, loss_weight=1.0) on ASL1 = sqrt(d^2 + mu^2) - mu.

    forward(pred, target, label_weight), all of one shape (N, 4); g = |d| / sqrt(d^2 + mu^2) (detached);
    tot = sum of label_weight (at least 1). label_weight only selects elements (> 0); it gets no gradient.
    """

    def __init__(self, mu=0.02, bins=10, momentum=0.0, loss_weight=1.0):
        checks.check_positive("mu", mu)
        super().__init__(bins, momentum, loss_weight, last_edge=lambda e: torch.full_like(e, 1e3))
        self.mu = mu

    def _prepare(self, pred, target, label_weight):
        checks.check_float("pred", pred)
        checks.check_like("target", target, "pred", pred)
        checks.check_like("label_weight", label_weight, "pred", pred)
        checks.check_range("label_weight", label_weight, low=0.0)
        return label_weight.detach()

    def _root(self, diff):
        return torch.sqrt(diff * diff + self.mu * self.mu)

    def _bins(self, diff, root, label_weight):
        """g = |d| / sqrt(d^2 + mu^2), detached, from the root the loss computes anyway."""
        return torch.abs(diff.detach() / root.detach()), label_weight > 0

    def bin_index(self, pred, target, label_weight):
        label_weight = self._prepare(pred, target, label_weight)
        diff = pred.detach() - target.detach()
        g, valid = self._bins(diff, self._root(diff), label_weight)
        return bin_index(g, self.upper, self.bins, valid)

    def forward(self, pred, target, label_weight):
        label_weight = self._prepare(pred, target, label_weight)
        diff = pred - target
        root = self._root(diff)
        loss = root - self.mu
        g, valid = self._bins(diff, root, label_weight)
        tot = label_weight.sum().clamp(min=1)
        weights = self._weights(g, valid, tot)
        return (loss * weights).sum() / tot * self.loss_weight
