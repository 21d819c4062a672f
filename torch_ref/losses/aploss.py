"""AP-Loss (Chen et al., "Towards Accurate One-Stage Object Detection with AP-Loss"; cccorn/AP-loss).

The official loss is a custom autograd function: the forward computes the loss values and the gradients,
the backward returns the saved gradients times the incoming gradient. The classification value is
1 - mean(interpolated precision), which is NOT the function the gradient differentiates.

Definition (official per-positive loop; positives pooled over the whole batch). Positives f_i (targets 1)
in ascending order, kept negatives x_j (targets 0 with x_j >= min(f) - delta), ramp
r(d) = clamp(d / (2 delta) + 0.5, 0, 1):
    a_i = sum_k r(f_k - f_i) + 0.5,  b_i = sum_j r(x_j - f_i),  prec_i = a_i / (a_i + b_i),
    M_i = running max of prec (interpolated precision),  s_i = 1 if prec_i == M_i else (1 - M_i) / (1 - prec_i),
    grad x_j = sum_i s_i r(x_j - f_i) / (a_i + b_i) / P,  grad f_i = -(1 - M_i) / P,  loss = 1 - mean(M).
No positive: loss 0 and zero gradient.

Fast evaluation, equal to the loop (float64 max_rel ~1e-15 against it). The 2P breakpoints f_i -+ delta cut
the line into 2P + 1 buckets; inside one bucket every r(x - f_i) is 0, 1 or linear in x for all i at once.
So one pass over the elements assigns each negative its bucket (an exact uniform-grid lookup, falling back to
searchsorted) and accumulates per-bucket counts and sums of (x - bucket's left edge); b_i is then a sum over
buckets of non-negative terms (well conditioned, no cancellation between large prefix sums),
and every negative's gradient is g0[k] + g1[k] * (x - left edge of k) with per-bucket tables g0, g1. Negatives
below min(f) - delta fall in bucket 0, where every ramp is 0: the official threshold filter, exactly.
Cost O(N log P + P^2) instead of the loop's O(N P).

Memory bound (N elements, P positives): besides the returned gradient (N values) the loss keeps one int32
bucket id per element (4N bytes); the element passes work on slices of ELEMENT_CHUNK elements and the
(positives x buckets) tables on blocks of at most TABLE_ENTRIES entries, each with a few temporaries of at
most 8 bytes per entry. Peak extra memory <= gradient + 4N bytes + ~50 bytes x (ELEMENT_CHUNK + TABLE_ENTRIES)
(~100 MB with the defaults) + O(P), whatever P is; measured for N = 8M float64: gradient + ids + 46 MB at
P = 200, + 100 MB at P = 3000.
"""
import math

import torch
from torch import nn

from ..assigners.aploss_assign import assign_targets
from . import checks

ELEMENT_CHUNK = 1 << 20
TABLE_ENTRIES = 1 << 20
LOOKUP_CELLS_PER_EDGE = 32
LOOKUP_MAX_PER_CELL = 4
FLOAT_DTYPES = (torch.float32, torch.float64)
TARGET_DTYPES = (torch.int32, torch.int64) + FLOAT_DTYPES


def _check_delta(delta):
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or delta <= 0:
        raise ValueError(f"delta must be a positive finite number, got {delta!r}")


def check_ap_inputs(logits, targets, delta):
    checks.check_float("logits", logits)             # float32 or float64: the exactness argument's dtypes
    checks.check_tensor("targets", targets)
    checks.check_shape("targets", targets, checks.shape_of(logits), f"{checks.shape_of(logits)} (the shape of logits)")
    if targets.dtype not in TARGET_DTYPES:
        raise ValueError(f"targets must be int32, int64, float32 or float64, got {checks.dtype_name(targets)}")
    # min / max are reductions (no N-sized temporaries); NaN fails them; floats must also be integral
    ok = targets.numel() == 0 or (bool(targets.min() >= -1) and bool(targets.max() <= 1) and (
        targets.dtype not in FLOAT_DTYPES or bool((targets == torch.round(targets)).all())))
    if not ok:
        raise ValueError("targets must contain only -1 (ignored), 0 (negative) and 1 (positive)")
    _check_delta(delta)


def check_module_inputs(cls_logits, reg_preds, anchors, annotations, delta):
    checks.check_float("cls_logits", cls_logits, ndim=3)
    batch, num_anchors, num_classes = checks.shape_of(cls_logits)
    checks.check_like("reg_preds", reg_preds, "cls_logits", cls_logits, same_shape=False)
    checks.check_shape("reg_preds", reg_preds, (batch, num_anchors, 4))
    checks.check_float("anchors", anchors)
    checks.check_shape("anchors", anchors, (num_anchors, 4))
    checks.check_float("annotations", annotations, ndim=3)
    num_gt = checks.shape_of(annotations)[1]
    checks.check_shape("annotations", annotations, (batch, num_gt, 5), f"({batch}, M, 5)")
    labels = annotations[..., 4]
    ok = (labels == -1) | ((labels >= 0) & (labels < num_classes) & (labels == torch.floor(labels)))
    if not bool(ok.all()):
        raise ValueError(f"annotations labels must be -1 (padding) or integers in [0, {num_classes})")
    _check_delta(delta)


def _blocks(total, size):
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def _edge_lookup(edges):
    """Tables for an exact, ~3x faster searchsorted(edges, x, right=True) on CPU, or None.

    A uniform grid of cells with cell(v) = clamp(floor((v - edges[0]) * scale), 0, cells - 1): cell() is
    monotone in v (every step rounds monotonically), so an edge in a lower cell than x is below x, one in a
    higher cell is above x, and only the edges sharing x's cell need a comparison. None (use searchsorted)
    when a cell holds more than LOOKUP_MAX_PER_CELL edges, e.g. with many tied positive logits.
    """
    n = edges.numel()
    cells = min(LOOKUP_CELLS_PER_EDGE * n, 1 << 20)
    span = float(edges[-1] - edges[0])
    scale = cells / span if 0 < span < math.inf else 0.0
    lookup = {"low": edges[0], "scale": scale, "cells": cells}
    cell = _cell(edges, lookup)
    per_cell = torch.bincount(cell, minlength=cells)
    depth = int(per_cell.max())
    if depth > LOOKUP_MAX_PER_CELL:
        return None
    before = per_cell.cumsum(0) - per_cell                      # edges in lower cells
    table = torch.full((depth, cells), math.inf, dtype=edges.dtype, device=edges.device)
    table[torch.arange(n, device=edges.device) - before[cell], cell] = edges
    lookup.update(before=before.to(torch.int32), table=table)
    return lookup


def _cell(v, lookup):
    return torch.clamp(torch.floor((v - lookup["low"]) * lookup["scale"]), 0, lookup["cells"] - 1).to(torch.int32)


def _bucket_of(v, edges, lookup):
    """Number of edges <= v (int32), i.e. searchsorted(edges, v, right=True)."""
    if lookup is None:
        return torch.searchsorted(edges, v, right=True, out_int32=True)
    cell = _cell(v, lookup)
    k = lookup["before"].index_select(0, cell)
    for row in lookup["table"]:
        k += v >= row.index_select(0, cell)
    return k


def _bucket_negatives(x, t, edges, left, num_buckets):
    """Pass 1: bucket id of every element (non-negatives -> the last, dummy bucket), per-bucket counts
    (int64) and sums of (x - left edge). Chunked sums are added up per chunk: two-level, accurate sums."""
    lookup = _edge_lookup(edges)
    bucket = torch.empty(x.numel(), dtype=torch.int32, device=x.device)
    counts = torch.zeros(num_buckets, dtype=torch.int64, device=x.device)
    sums = torch.zeros(num_buckets, dtype=x.dtype, device=x.device)
    for s, e in _blocks(x.numel(), ELEMENT_CHUNK):
        k = torch.where(t[s:e] == 0, _bucket_of(x[s:e], edges, lookup), num_buckets - 1).to(torch.int32)
        bucket[s:e] = k
        counts += torch.bincount(k, minlength=num_buckets)
        sums += torch.bincount(k, weights=x[s:e] - left.index_select(0, k), minlength=num_buckets)
    counts[-1] = 0
    return bucket, counts, sums


def _positive_a(fs, delta):
    """a_i of every positive: the official formula on blocks of rows of the P x P ramp matrix."""
    a = torch.empty_like(fs)
    for s, e in _blocks(fs.numel(), max(1, TABLE_ENTRIES // fs.numel())):
        ramp = torch.clamp((fs[None, :] - fs[s:e, None]) / (2 * delta) + 0.5, min=0, max=1)
        a[s:e] = ramp.sum(dim=1) + 0.5
    return a


class _RampTables:
    """Which buckets are linear (first_lin[i] <= k < first_one[i]) or 1 (k >= first_one[i]) for positive i,
    in blocks of positives (rows) so that a block's (rows x buckets) tables stay within TABLE_ENTRIES."""

    def __init__(self, fs, edges, left, delta):
        self.lower, self.left, self.delta = fs - delta, left, delta
        self.first_lin = torch.searchsorted(edges, self.lower, right=True)
        self.first_one = torch.searchsorted(edges, fs + delta, right=False) + 1
        self.ks = torch.arange(left.numel(), device=left.device)
        self.rows = _blocks(fs.numel(), max(1, TABLE_ENTRIES // left.numel()))

    def block(self, s, e):
        """-> (linear mask, one mask, offset = left edge - (f_i - delta), >= 0 on the linear buckets)."""
        lin = (self.ks >= self.first_lin[s:e, None]) & (self.ks < self.first_one[s:e, None])
        one = self.ks >= self.first_one[s:e, None]
        return lin, one, self.left[None, :] - self.lower[s:e, None]

    def negative_sums(self, counts, sums):
        """b_i = #negatives at or above f_i + delta + sum over linear buckets of (sums + counts * offset) / 2delta."""
        at_or_above = torch.cat([counts.flip(0).cumsum(0).flip(0), counts.new_zeros(1)])   # exact integers
        countsf = counts.to(sums.dtype)
        b = torch.empty_like(self.lower)
        for s, e in self.rows:
            lin, _, offset = self.block(s, e)
            linear = torch.where(lin, sums[None, :] + countsf[None, :] * offset, 0).sum(dim=1)
            b[s:e] = at_or_above[self.first_one[s:e]].to(sums.dtype) + linear / (2 * self.delta)
        return b

    def gradient_tables(self, w):
        """Per bucket k: grad(x) = g0[k] + g1[k] * (x - left[k]) = sum_i w_i r(x - f_i)."""
        g0 = torch.zeros_like(self.left)
        g1 = torch.zeros_like(self.left)
        for s, e in self.rows:
            lin, one, offset = self.block(s, e)
            wr = w[s:e, None]
            g0 += torch.where(one, wr, 0).sum(dim=0) + torch.where(lin, wr * offset, 0).sum(dim=0) / (2 * self.delta)
            g1 += torch.where(lin, wr, 0).sum(dim=0) / (2 * self.delta)
        g0[-1] = 0                                              # the dummy bucket of non-negatives
        g1[-1] = 0
        return g0, g1


def ap_loss_and_grad(logits, targets, delta=1.0):
    """-> (loss (0-D tensor), grad (shape of logits)), no autograd. Inputs are assumed checked."""
    x = logits.detach().reshape(-1)
    t = targets.reshape(-1)
    grad = torch.zeros_like(x)
    pos_idx = torch.nonzero(t == 1).reshape(-1)
    num_pos = pos_idx.numel()
    if num_pos == 0:
        return x.new_zeros(()), grad.reshape(logits.shape)
    fs, order = torch.sort(x[pos_idx], stable=True)
    pos_idx = pos_idx[order]
    edges = torch.sort(torch.cat([fs - delta, fs + delta])).values   # 2P breakpoints; edges[0] = min(f) - delta
    left = torch.cat([edges[:1], edges, edges.new_zeros(1)])    # left edge of bucket k = edges[k - 1]; + dummy

    bucket, counts, sums = _bucket_negatives(x, t, edges, left, left.numel())
    ramps = _RampTables(fs, edges, left, delta)
    a = _positive_a(fs, delta)
    b = ramps.negative_sums(counts, sums)
    prec = a / (a + b)
    interp = torch.cummax(prec, dim=0).values                   # interpolated precision, ascending logits
    scale = torch.where(prec < interp, (1 - interp) / (1 - prec), 1)
    g0, g1 = ramps.gradient_tables(scale / (a + b) / num_pos)

    for s, e in _blocks(x.numel(), ELEMENT_CHUNK):              # pass 2: negatives, from their bucket
        k = bucket[s:e]
        grad[s:e] = g0.index_select(0, k) + g1.index_select(0, k) * (x[s:e] - left.index_select(0, k))
    grad[pos_idx] = (interp - 1) / num_pos
    return 1 - interp.sum() / num_pos, grad.reshape(logits.shape)


class APLossFunction(torch.autograd.Function):
    """Value = 1 - mean interpolated precision; backward = saved AP-Loss gradient x incoming gradient."""

    @staticmethod
    def forward(ctx, logits, targets, delta=1.0):
        loss, grad = ap_loss_and_grad(logits, targets, delta)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None


def ap_loss(logits, targets, delta=1.0):
    """AP-Loss of logits (any shape) with targets of the same shape: 1 positive, 0 negative, -1 ignored."""
    check_ap_inputs(logits, targets, delta)
    return APLossFunction.apply(logits, targets, float(delta))


class RegressionLossFunction(torch.autograd.Function):
    """Smooth L1 (beta 1) over positives / max(num_pos, 1); backward: the official gradient, which is
    (d if |d| <= 1 else sign(d)) / (4 max(num_pos, 1)), a quarter of the value's derivative."""

    @staticmethod
    def forward(ctx, reg_preds, reg_targets, positive):
        num_pos = positive.sum().clamp(min=1).to(reg_preds.dtype)
        diff = torch.where(positive[..., None], reg_preds.detach() - reg_targets, 0)
        small = diff.abs() <= 1.0
        value = torch.where(small, 0.5 * diff * diff, diff.abs() - 0.5).sum() / num_pos
        ctx.save_for_backward(torch.where(small, diff, torch.sign(diff)) / (4 * num_pos))
        return value

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None


class APLoss(nn.Module):
    """forward(cls_logits (B, A, C), reg_preds (B, A, 4), anchors (A, 4) x1y1x2y2, annotations (B, M, 5)
    [x1, y1, x2, y2, label], label -1 = padding) -> (cls_loss, reg_loss), both 0-D tensors."""

    def __init__(self, delta=1.0):
        super().__init__()
        _check_delta(delta)
        self.delta = float(delta)

    def forward(self, cls_logits, reg_preds, anchors, annotations):
        check_module_inputs(cls_logits, reg_preds, anchors, annotations, self.delta)
        targets, positive, reg_targets = assign_targets(anchors, annotations, cls_logits.shape[2], reg_preds.dtype)
        cls_loss = APLossFunction.apply(cls_logits, targets, self.delta)
        reg_loss = RegressionLossFunction.apply(reg_preds, reg_targets, positive)
        return cls_loss, reg_loss
