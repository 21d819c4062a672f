"""float64 NumPy reference of the delta box coder (mmdetection DeltaXYWHBBoxCoder, non-legacy)."""
import math

import numpy as np


def delta_encode(anchors, gt, means=(0, 0, 0, 0), stds=(1, 1, 1, 1)):
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    px, py = anchors[:, 0] + 0.5 * pw, anchors[:, 1] + 0.5 * ph
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    d = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)
    return (d - np.asarray(means, np.float64)) / np.asarray(stds, np.float64)


def delta_decode(anchors, deltas, means=(0, 0, 0, 0), stds=(1, 1, 1, 1), max_shape=None, wh_ratio_clip=16 / 1000):
    anchors = np.asarray(anchors, np.float64)
    d = np.asarray(deltas, np.float64) * np.asarray(stds, np.float64) + np.asarray(means, np.float64)
    max_ratio = abs(math.log(wh_ratio_clip))
    dw, dh = np.clip(d[:, 2], -max_ratio, max_ratio), np.clip(d[:, 3], -max_ratio, max_ratio)
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    px, py = anchors[:, 0] + 0.5 * pw, anchors[:, 1] + 0.5 * ph
    gw, gh = pw * np.exp(dw), ph * np.exp(dh)
    gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
    boxes = np.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], axis=1)
    if max_shape is not None:
        h, w = max_shape
        boxes = np.clip(boxes, 0, [w, h, w, h])
    return boxes
