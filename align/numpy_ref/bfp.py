"""float64 NumPy reference of Libra R-CNN's neck (../shared/specs/libra_rcnn.md B.2 items 3-5): mmdet's FPN with a
max-pooled P6, mmcv's embedded-Gaussian NonLocal2d and BFP, written from the spec's formulas, independently of the
twins (torch_ref/necks/bfp.py, paddle_impl/necks/bfp.py).

Resizing by its definition, in integer arithmetic: nearest output index d reads floor(d * in / out); adaptive max
pool bin i spans [floor(i * in / out), ceil((i + 1) * in / out)). Weights come as a mapping of mmdet's state_dict
names (e.g. `neck.0.fpn_convs.0.conv.weight`) to arrays; `prefix` is the part before `lateral_convs` / `refine`.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .common import f64


def conv2d(x, w, b, padding=0):
    """Stride-1 cross-correlation (as both frameworks): x [B, C, H, W], w [O, C, k, k] -> [B, O, H', W']."""
    x, w = f64(x), f64(w)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = sliding_window_view(xp, w.shape[-2:], axis=(2, 3))                   # [B, C, H', W', k, k]
    return np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2) + f64(b)[:, None, None]


def nearest_index(n_in, n_out):
    # exact; the frameworks use a float scale and can floor one below where d*in/out is an integer (see
    # tests/test_libra_neck.py): never at mmdet's padded sizes up to 3136
    return np.arange(n_out) * n_in // n_out


def nearest(x, size):
    return x[..., nearest_index(x.shape[-2], size[0])[:, None], nearest_index(x.shape[-1], size[1])[None, :]]


def _adaptive_max_1d(x, n_out, axis):
    """Max over each bin along axis; bins have different lengths, so pad each to the longest by repeating its last
    index (a repeat does not change a max)."""
    n_in = x.shape[axis]
    i = np.arange(n_out)
    start, end = i * n_in // n_out, -(-(i + 1) * n_in // n_out)
    idx = np.minimum(start[:, None] + np.arange((end - start).max())[None, :], end[:, None] - 1)   # [n_out, kmax]
    return np.take(x, idx, axis=axis).max(axis=axis + 1)


def adaptive_max_pool(x, size):
    """x [B, C, H, W] -> [B, C, size]; a max over a rectangle is a max over rows, then over columns."""
    return _adaptive_max_1d(_adaptive_max_1d(f64(x), size[0], 2), size[1], 3)


def _conv(state, name, x, padding=0):
    return conv2d(x, state[f"{name}.conv.weight"], state[f"{name}.conv.bias"], padding)


def fpn(inputs, state, prefix="neck.0.", num_outs=5):
    """C2..C5 -> P2..P6 (mmdet FPN, add_extra_convs False)."""
    lat = [_conv(state, f"{prefix}lateral_convs.{i}", x) for i, x in enumerate(inputs)]
    for i in range(len(lat) - 1, 0, -1):
        lat[i - 1] = lat[i - 1] + nearest(lat[i], lat[i - 1].shape[-2:])
    outs = [_conv(state, f"{prefix}fpn_convs.{i}", x, padding=1) for i, x in enumerate(lat)]
    while len(outs) < num_outs:
        outs.append(outs[-1][..., ::2, ::2])                 # max_pool2d(kernel 1, stride 2): every other pixel
    return outs


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def non_local(x, state, prefix="neck.1.refine.", use_scale=False):
    """out = x + conv_out(y), y[:, :, p] = sum_q softmax_q(theta[:, :, p] . phi[:, :, q]) g[:, :, q]."""
    b, c, h, w = x.shape
    g, theta, phi = (_conv(state, prefix + n, x).reshape(b, -1, h * w) for n in ("g", "theta", "phi"))
    logits = np.einsum("bcp,bcq->bpq", theta, phi)
    if use_scale:
        logits = logits / np.sqrt(theta.shape[1])
    y = np.einsum("bpq,bcq->bcp", softmax(logits), g).reshape(b, -1, h, w)
    return x + _conv(state, prefix + "conv_out", y)


def bfp(feats, state, prefix="neck.1.", refine_level=2, use_scale=False):
    """P2..P6 -> {'gathered': mean at the refine size, 'refined': after NonLocal2d, 'outs': [5 levels]}."""
    size = feats[refine_level].shape[-2:]
    gathered = sum(adaptive_max_pool(x, size) if i < refine_level else nearest(x, size)
                   for i, x in enumerate(feats)) / len(feats)
    refined = non_local(gathered, state, prefix + "refine.", use_scale)
    outs = [(nearest(refined, x.shape[-2:]) if i < refine_level else adaptive_max_pool(refined, x.shape[-2:])) + x
            for i, x in enumerate(feats)]
    return {"gathered": gathered, "refined": refined, "outs": outs}


def libra_neck(inputs, state):
    """C2..C5 -> dict of bfp() plus 'fpn': P2..P6 before BFP."""
    feats = fpn(inputs, state)
    return {"fpn": feats, **bfp(feats, state)}
