"""Anchor generator (mmdetection AnchorGenerator semantics).

Per level with stride s: base size s, scales octave_base_scale * 2**(i / scales_per_octave), ratios h/w;
widths s*scale/sqrt(ratio), heights s*scale*sqrt(ratio), ratio-major (ratio outer, scale inner); centred at
((x + center_offset) * s, (y + center_offset) * s). Anchors are ordered location-major (row, column), anchor
minor, the order in which RetinaHead flattens its outputs. RetinaNet: center_offset 0; AP-Loss: ratios
[0.5, 1, 2], 2 scales per octave, center_offset 0.5.
"""
import math

import torch
from torch import nn


def base_anchor_sizes(stride, octave_base_scale, scales_per_octave, ratios):
    """(width, height) per anchor, in Python float64 so both frameworks start from identical numbers."""
    scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
    return [(stride * sc / math.sqrt(r), stride * sc * math.sqrt(r)) for r in ratios for sc in scales]


class AnchorGenerator(nn.Module):
    def __init__(self, strides=(8, 16, 32, 64, 128), octave_base_scale=4, scales_per_octave=3,
                 ratios=(0.5, 1.0, 2.0), center_offset=0.0):
        super().__init__()
        self.strides = tuple(strides)
        self.octave_base_scale = octave_base_scale
        self.scales_per_octave = scales_per_octave
        self.ratios = tuple(ratios)
        self.center_offset = center_offset

    @property
    def num_anchors(self):
        return len(self.ratios) * self.scales_per_octave

    def single_level(self, stride, height, width, dtype, device=None):
        sizes = torch.tensor(base_anchor_sizes(stride, self.octave_base_scale, self.scales_per_octave, self.ratios),
                             dtype=dtype, device=device)
        half = torch.cat([-0.5 * sizes, 0.5 * sizes], dim=1)                        # (A, 4)
        xs = (torch.arange(width, dtype=dtype, device=device) + self.center_offset) * stride
        ys = (torch.arange(height, dtype=dtype, device=device) + self.center_offset) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)          # (H*W, 1, 4)
        return (shifts + half[None]).reshape(-1, 4)

    def forward(self, feature_sizes, dtype=torch.float32, device=None):
        """feature_sizes: [(H, W)] per level -> [(H*W*A, 4)] per level."""
        return [self.single_level(s, h, w, dtype, device) for s, (h, w) in zip(self.strides, feature_sizes)]
