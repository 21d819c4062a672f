"""GHM-C and GHM-R (Gradient Harmonized Single-stage Detector), mmdetection semantics, binned in one pass.

Bins use float32 edges arange(bins + 1) / bins (last edge + 1e-6 for GHM-C, 1e3 for GHM-R) cast to the
input dtype; element i lands in bin k iff edges[k] <= g < edges[k + 1]. bin_index finds k without a search
(see bin_slot); counts come from one bincount, so there is no per-bin loop and no host sync. Slots past the
bins mean "no bin" (ignored elements): they index entries of weight 0 in the per-slot weight table.

GHM-C's gradient w.r.t. the logits is the closed form (sigmoid(pred) - target) * weight / tot, from the
sigmoid the binning needs anyway (a torch.autograd.Function): autograd through a written-out BCE would cost
several passes more over anchors x classes.

On CPU tensors GHM-C runs its two passes over anchors x classes (bin counts; weighted BCE and gradient) on
fused kernels (ghm_kernel: stock ops sit at the edge of the speed target); the stock-op path below serves GPU
tensors and machines where the kernel cannot be built. Both follow the same definition and bin rule.

State: `acc_sum` (zeros(bins)) is a registered buffer and appears in the state_dict. It is kept in the
dtype of the predictions that last updated it (the momentum update runs in the input dtype and replaces the
buffer), so a float64 run never rounds its state to float32. With momentum 0 it stays zero.
"""
import torch
from torch import nn

from . import checks, ghm_kernel

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


def bin_slot(g, upper, bins):
    """Slot of each element: its bin k (edges[k] <= g < edges[k + 1]) for 0 <= g < the last edge; a slot >= bins
    ("no bin") for g >= the last edge and for ignored elements, which the caller moved to g = IGNORED_G.

    For 0 <= g <= 1 and edges[k] = float32(k / bins) (k < bins), j = floor(g * bins * (1 - 2^-20)) is k or
    k - 1: the factor 1 - 2^-20 outweighs the float32 rounding of the edges and of the product (2^-23), so j
    never passes k, and it is too close to 1 to lose a whole bin. One comparison with the next edge, upper[j],
    settles it: exact in both dtypes, with no search. For g = IGNORED_G, j points past the edges (+inf) and
    stays there. int32 slots: half the memory traffic of int64 in the passes that follow.
    """
    j = (g * (bins * SHRINK)).int()                       # truncation = floor, as g >= 0
    j += g >= upper.to(g.dtype).index_select(0, j.reshape(-1)).reshape(j.shape)
    return j


def bin_index(g, upper, bins, valid):
    """Bin k of each element, `bins` for ignored elements and g >= the last edge (see bin_slot)."""
    return bin_slot(g.masked_fill(~valid, IGNORED_G), upper, bins).clamp_(max=bins).long()


def bin_weights(counts, acc_sum, momentum):
    """Weight of each bin (int64 counts: elements per bin) and the updated acc_sum.

    mmdetection weighs an element of bin k by tot / num_k (tot / acc_sum_k with momentum) / n, n the number
    of non-empty bins, and divides the weighted sum by tot: tot cancels, so bin k weighs 1 / (num_k * n)
    (1 / (acc_sum_k * n)) if non-empty, 0 if empty. acc_sum carries the dtype; everything is detached."""
    nonempty = counts > 0
    num = counts.to(acc_sum.dtype)
    if momentum > 0:
        acc_sum = torch.where(nonempty, momentum * acc_sum + (1 - momentum) * num, acc_sum)
    denom = acc_sum if momentum > 0 else num
    n = nonempty.sum().to(acc_sum.dtype).clamp(min=1)
    return torch.where(nonempty, 1 / (torch.where(nonempty, denom, 1) * n), 0), acc_sum


class HarmonizedBCE(torch.autograd.Function):
    """sum(weight * BCE-with-logits(pred, target)); gradient w.r.t. pred only, in closed form from
    diff = sigmoid(pred) - target: diff * weight. weight and diff are detached.

    BCE = log1p(exp(-|x|)) + (relu(x) - x t): accurate for confident logits (1 + e^-|x| is never rounded,
    and relu(x) - x t is exactly 0 for a confident correct binary target, so nothing cancels).
    Computed in place on one buffer: every fresh anchors x classes buffer costs page faults."""

    @staticmethod
    def forward(ctx, pred, target, diff, weight):
        ctx.save_for_backward(diff, weight)
        bce = pred.abs().neg_().exp_().log1p_()
        bce += pred.clamp(min=0).addcmul_(pred, target, value=-1)
        return bce.mul_(weight).sum()

    @staticmethod
    def backward(ctx, grad_out):
        diff, weight = ctx.saved_tensors
        return torch.mul(diff, weight).mul_(grad_out), None, None, None


class FusedHarmonizedBCE(torch.autograd.Function):
    """HarmonizedBCE on the fused CPU kernel (ghm_kernel): loss and gradient come out of one pass that bins
    every element again; weight = table[slot]. `inputs`: the kernel's (see GHMC._kernel_inputs), detached."""

    @staticmethod
    def forward(ctx, pred, inputs, table, bins, kernel):
        loss, grad = kernel.ghm_harmonized_bce(*inputs, table, bins)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None


def _check_config(bins, momentum, loss_weight):
    checks.check_int("bins", bins, 1)
    checks.check_number("momentum", momentum, 0, 1, high_open=True)
    checks.check_number("loss_weight", loss_weight, 0)


class _GHMBase(nn.Module):
    def __init__(self, bins, momentum, loss_weight, last_edge):
        super().__init__()
        _check_config(bins, momentum, loss_weight)
        self.bins, self.momentum, self.loss_weight = int(bins), float(momentum), loss_weight
        self.register_buffer("edges", float32_edges(bins, last_edge), persistent=False)
        self.register_buffer("upper", upper_edges(self.edges), persistent=False)
        self.register_buffer("acc_sum", torch.zeros(bins))

    def _table(self, counts, dtype, slots):
        """Weight / tot of each of `slots` slots: the bins' (see bin_weights), then 0 for "no bin"; updates
        acc_sum with momentum."""
        per_bin, acc_sum = bin_weights(counts, self.acc_sum.to(dtype), self.momentum)
        if self.momentum > 0:
            self.acc_sum = acc_sum
        return torch.cat([per_bin, per_bin.new_zeros(slots - self.bins)])

    def _weights(self, g, invalid):
        """Per-element weight / tot (see bin_weights) from g (overwritten) and the ignore mask."""
        slot = bin_slot(g.masked_fill_(invalid, IGNORED_G), self.upper, self.bins).reshape(-1)
        slots = self.upper.numel()
        table = self._table(torch.bincount(slot, minlength=slots)[:self.bins], g.dtype, slots)
        return table.index_select(0, slot).reshape(g.shape)


class GHMC(_GHMBase):
    """GHM-C(bins=10, momentum=0, use_sigmoid=True, loss_weight=1.0).

    forward(pred (N, C) logits, target, label_weight): target is float (N, C) in [0, 1] or integer labels
    (N,) (labels in [0, C) are classes, anything else background -> all-zero row); label_weight is (N, C)
    or (N,) (broadcast over classes). tot = number of elements with label_weight > 0 (at least 1); it
    cancels (see bin_weights).
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
            checks.check_like("target", target, "pred", pred, low=0.0, high=1.0)
        else:
            checks.check_integer("target", target, ndim=1)
            checks.check_shape("target labels", target, (n,))
            target = (target.unsqueeze(1) == torch.arange(c, device=target.device)).to(pred.dtype)
        checks.check_like("label_weight", label_weight, "pred", pred, same_shape=False, low=0.0)
        if checks.shape_of(label_weight) == (n,):
            label_weight = label_weight.unsqueeze(1).expand(n, c)
        else:
            checks.check_shape("label_weight", label_weight, (n, c), f"({n}, {c}) or ({n},)")
        return target.detach(), label_weight.detach()

    def _kernel_inputs(self, pred, target, label_weight):
        """What the kernel's ops take before `bins`: pred (detached), target, label_weight and upper, contiguous
        and of pred's dtype."""
        return pred.detach().contiguous(), target.contiguous(), label_weight.contiguous(), self.upper.to(pred.dtype)

    def bin_index(self, pred, target, label_weight):
        """Bin of every (anchor, class) element as forward assigns it (`bins` = ignored)."""
        target, label_weight = self._prepare(pred, target, label_weight)
        kernel = ghm_kernel.for_tensor(pred)
        if kernel is not None:
            inputs = self._kernel_inputs(pred, target, label_weight)
            return kernel.ghm_slots(*inputs, self.bins).long()
        g = (pred.detach().sigmoid() - target).abs()
        return bin_index(g, self.upper, self.bins, label_weight > 0)

    def forward(self, pred, target, label_weight):
        target, label_weight = self._prepare(pred, target, label_weight)
        kernel = ghm_kernel.for_tensor(pred)
        if kernel is not None:
            inputs = self._kernel_inputs(pred, target, label_weight)
            table = self._table(kernel.ghm_counts(*inputs, self.bins), pred.dtype, self.bins + 1)
            return FusedHarmonizedBCE.apply(pred, inputs, table, self.bins, kernel) * self.loss_weight
        diff = pred.detach().sigmoid().sub_(target)           # g = |diff|; also the BCE's gradient
        weights = self._weights(diff.abs(), label_weight <= 0)
        return HarmonizedBCE.apply(pred, target, diff, weights) * self.loss_weight


class GHMR(_GHMBase):
    """GHM-R(mu=0.02, bins=10, momentum=0, loss_weight=1.0) on ASL1 = sqrt(d^2 + mu^2) - mu.

    forward(pred, target, label_weight), all of one shape (N, 4); g = |d| / sqrt(d^2 + mu^2) (detached);
    tot = sum of label_weight (at least 1; it cancels, see bin_weights). label_weight only selects elements
    (> 0); it gets no gradient.
    """

    def __init__(self, mu=0.02, bins=10, momentum=0.0, loss_weight=1.0):
        checks.check_positive("mu", mu)
        super().__init__(bins, momentum, loss_weight, last_edge=lambda e: torch.full_like(e, 1e3))
        self.mu = mu

    def _prepare(self, pred, target, label_weight):
        checks.check_float("pred", pred)
        checks.check_like("target", target, "pred", pred)
        checks.check_like("label_weight", label_weight, "pred", pred, low=0.0)
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
        return (loss * self._weights(g, ~valid)).sum() * self.loss_weight
