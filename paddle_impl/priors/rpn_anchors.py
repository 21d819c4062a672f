"""mmdetection's AnchorGenerator as Faster R-CNN's RPN configures it (../shared/specs/libra_rcnn.md B.4).

Paddle twin of torch_ref/priors/rpn_anchors.py; float64 NumPy reference: align/numpy_ref/rpn.py.
A separate class from paddle_impl/priors/anchors.py (RetinaNet): mmdet computes the base anchors in float32 even for
float64 priors (stride-4 half-width 22.627416610717773, exact 22.62741699796952).
Per level with stride s: h_ratio = sqrt(r), w_ratio = 1 / h_ratio, w = s * w_ratio * scale, h = s * h_ratio * scale
(ratio outer, scale inner), base anchor (c - w/2, c - h/2, c + w/2, c + h/2) with c = center_offset * s (0: the
pixel corner), shifted by (x * s, y * s). Order: location-major (y outer, x inner), anchors fastest.
"""
import math

import paddle
from paddle import nn


class RPNAnchorGenerator(nn.Layer):
    def __init__(self, strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0), scales=(8.0,), center_offset=0.0):
        super().__init__()
        self.strides = tuple(strides)
        self.ratios = tuple(float(r) for r in ratios)
        self.scales = tuple(float(s) for s in scales)
        self.center_offset = float(center_offset)

    @property
    def num_anchors(self):
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, stride):
        """(A, 4) float32, with mmdet's float32 operations in mmdet's order (base size = stride)."""
        ratios = paddle.to_tensor(self.ratios, dtype="float32")
        scales = paddle.to_tensor(self.scales, dtype="float32")
        h_ratios = paddle.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape([-1])
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape([-1])
        c = self.center_offset * stride
        return paddle.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], axis=-1)

    def single_level(self, stride, height, width, dtype="float32"):
        base = self.base_anchors(stride).astype(dtype)                      # float32 values, then the dtype
        xs = paddle.arange(width).astype(dtype) * stride
        ys = paddle.arange(height).astype(dtype) * stride
        yy, xx = paddle.meshgrid(ys, xs)
        shifts = paddle.stack([xx, yy, xx, yy], axis=-1).reshape([-1, 1, 4])  # (H*W, 1, 4)
        return (base.unsqueeze(0) + shifts).reshape([-1, 4])

    def forward(self, feature_sizes, dtype="float32"):
        """feature_sizes: [(H, W)] per level -> [(H*W*A, 4)] per level."""
        return [self.single_level(s, h, w, dtype) for s, (h, w) in zip(self.strides, feature_sizes)]

    def valid_flags(self, feature_sizes, pad_shape):
        """[(H*W*A,) bool] per level: rows/columns at or beyond ceil(pad_shape / stride) are invalid (the batch is
        padded beyond this image's own padded size). pad_shape: (h, w)."""
        flags = []
        for s, (h, w) in zip(self.strides, feature_sizes):
            vh, vw = min(math.ceil(pad_shape[0] / s), h), min(math.ceil(pad_shape[1] / s), w)
            valid = (paddle.arange(h) < vh).unsqueeze(1) & (paddle.arange(w) < vw).unsqueeze(0)
            flags.append(valid.reshape([-1, 1]).expand([h * w, self.num_anchors]).reshape([-1]))
        return flags
