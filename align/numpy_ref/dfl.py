"""Distribution focal loss (PP-YOLOE `_df_loss`): w_l CE(left) + w_r CE(right), mean over the last target dim."""
import numpy as np

from .common import f64, reduce, unbroadcast, weighted


def distribution_focal_loss(pred_dist, target, reg_max=16, weight=None, reduction="none"):
    x, t = f64(pred_dist), f64(target)
    left = np.floor(t).astype(np.int64)
    w_left = (left + 1) - t
    w_right = 1 - w_left
    shifted = x - x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    logp = shifted - log_z
    nll_left = -np.take_along_axis(logp, left[..., None], -1)[..., 0]
    nll_right = -np.take_along_axis(logp, left[..., None] + 1, -1)[..., 0]
    k = t.shape[-1]
    elem = (nll_left * w_left + nll_right * w_right).mean(-1, keepdims=True)
    loss, w = weighted(elem, weight)
    value, scale = reduce(loss, reduction)
    # d(-log softmax_j)/dx = softmax - onehot(j); each row carries (w_l + w_r) = 1 of softmax
    soft = np.exp(logp)
    onehot_l = np.arange(reg_max + 1) == left[..., None]
    onehot_r = np.arange(reg_max + 1) == left[..., None] + 1
    per_side = soft * (w_left + w_right)[..., None] - w_left[..., None] * onehot_l - w_right[..., None] * onehot_r
    grads = {"pred_dist": per_side * (scale * w / k)[..., None], "target": np.zeros_like(t)}
    if weight is not None:
        grads["weight"] = unbroadcast(scale * elem, np.shape(weight))
    return value, grads
