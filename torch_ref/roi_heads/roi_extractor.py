"""mmdetection's SingleRoIExtractor (twin: paddle_impl/roi_heads/roi_extractor.py): each RoI is pooled by RoIAlign
(aligned=True, adaptive sampling, 'avg') from one FPN level chosen by its scale (../shared/specs/libra_rcnn.md B.5.5).

torchvision's MultiScaleRoIAlign is not used: it pools with aligned=False and maps levels with another formula (B.11).
"""
import torch
from torch import nn
from torchvision.ops import roi_align

# mmdet's map_roi_levels adds this inside the log2, so a scale of exactly 56 * 2^k (or a hair below) maps to level k
LEVEL_EPS = 1e-6


def map_roi_levels(rois, num_levels, finest_scale=56):
    """Level per RoI [K] int64: floor(log2(sqrt(w h) / finest_scale + 1e-6)), clamped to [0, num_levels - 1]."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + LEVEL_EPS))
    return levels.clamp(min=0, max=num_levels - 1).long()


class SingleRoIExtractor(nn.Module):
    def __init__(self, out_size=7, sampling_ratio=0, featmap_strides=(4, 8, 16, 32), finest_scale=56):
        super().__init__()
        self.out_size, self.sampling_ratio = out_size, sampling_ratio
        self.featmap_strides, self.finest_scale = tuple(featmap_strides), finest_scale

    def forward(self, feats, rois):
        """feats: the first len(featmap_strides) levels [B, C, H_l, W_l]; rois [K, 5] (image index, x1, y1, x2, y2).
        Returns [K, C, out_size, out_size] in the RoI order."""
        levels = map_roi_levels(rois, len(self.featmap_strides), self.finest_scale)
        outs, order = [], []
        for lvl, (feat, stride) in enumerate(zip(feats, self.featmap_strides)):   # one RoIAlign call per level
            inds = (levels == lvl).nonzero().squeeze(1)
            if len(inds):
                outs.append(roi_align(feat, rois[inds], self.out_size, spatial_scale=1.0 / stride,
                                      sampling_ratio=self.sampling_ratio, aligned=True))
                order.append(inds)
        if not outs:
            return feats[0].new_zeros((0, feats[0].shape[1], self.out_size, self.out_size))
        # the levels' outputs are concatenated level by level; the inverse permutation puts them back in RoI order
        return torch.cat(outs)[torch.argsort(torch.cat(order))]
