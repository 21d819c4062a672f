"""mmdetection's AnchorGenerator as Faster R-CNN's RPN configures it (../shared/specs/libra_rcnn.md B.4).

Twin: paddle_impl/priors/rpn_anchors.py; float64 NumPy reference: align/numpy_ref/rpn.py.
A separate class from torch_ref/priors/anchors.py (RetinaNet): that one computes the base sizes in Python float64,
while mmdet computes the base anchors in float32 even for float64 priors (stride-4 half-width 22.627416610717773,
exact 22.62741699796952); changing it would change RetinaNet's numbers.
Per level with stride s: h_ratio = sqrt(r), w_ratio = 1 / h_ratio, w = s * w_ratio * scale, h = s * h_ratio * scale
(ratio outer, scale inner), base anchor (c - w/2, c - h/2, c + w/2, c + h/2) with c = center_offset * s (0: the
pixel corner), shifted by (x * s, y * s). Order: location-major (y outer, x inner), anchors fastest.
"""
import math

import torch
from torch import nn


class RPNAnchorGenerator(nn.Module):
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
        ratios = torch.tensor(self.ratios, dtype=torch.float32)
        scales = torch.tensor(self.scales, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        c = self.center_offset * stride
        return torch.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], dim=-1)

    def single_level(self, stride, height, width, dtype=torch.float32, device=None):
        base = self.base_anchors(stride).to(device=device, dtype=dtype)      # float32 values, then the dtype
        xs = torch.arange(width, device=device).to(dtype) * stride
        ys = torch.arange(height, device=device).to(dtype) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)    # (H*W, 1, 4)
        return (base[None] + shifts).reshape(-1, 4)

    def forward(self, feature_sizes, dtype=torch.float32, device=None):
        """feature_sizes: [(H, W)] per level -> [(H*W*A, 4)] per level."""
        return [self.single_level(s, h, w, dtype, device) for s, (h, w) in zip(self.strides, feature_sizes)]

    def valid_flags(self, feature_sizes, pad_shape, device=None):
        """[(H*W*A,) bool] per level: rows/columns at or beyond ceil(pad_shape / stride) are invalid (the batch is
        padded beyond this image's own padded size). pad_shape: (h, w)."""
        flags = []
        for s, (h, w) in zip(self.strides, feature_sizes):
            vh, vw = min(math.ceil(pad_shape[0] / s), h), min(math.ceil(pad_shape[1] / s), w)
            valid = (torch.arange(h, device=device) < vh)[:, None] & (torch.arange(w, device=device) < vw)[None, :]
            flags.append(valid.reshape(-1, 1).expand(-1, self.num_anchors).reshape(-1))
        return flags
