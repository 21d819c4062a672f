"""PPYOLOEHead (ET-head) with PaddleDetection's names and initialisation (twin: paddle_impl/heads/ppyoloe_head.py).

Per level (strides 32, 16, 8): one shared average of the feature feeds both ESEAttn stems; the class branch
has a residual (pred_cls(stem_cls(f, avg) + f)), the box branch predicts 4 x (reg_max + 1) distance bins,
channel = side * (reg_max + 1) + bin, sides (l, t, r, b). Distances are the expectation over the softmax of
the bins (proj_conv, a fixed linspace(0, reg_max) 1x1 conv), in grid units.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.backbones.cspresnet import ConvBNLayer
from torch_ref.priors.grid_cells import eval_anchor_points


def spatial_mean(x):
    """F.adaptive_avg_pool2d(x, 1) as a mean over H and W, on both sides: Paddle 3.3.1's AdaptiveAvgPool2D
    float64 backward scales by float32(1/(H*W)) (tests/test_backward.py shows the defect is still there)."""
    return x.mean((2, 3), keepdim=True)


class ESEAttn(nn.Module):
    """conv(feat * sigmoid(fc(avg))): fc a 1x1 conv with bias (weights ~ N(0, 0.001)), conv a 1x1 ConvBN swish."""

    def __init__(self, feat_channels):
        super().__init__()
        self.fc = nn.Conv2d(feat_channels, feat_channels, 1)
        self.conv = ConvBNLayer(feat_channels, feat_channels, 1)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feat, avg_feat):
        return self.conv(feat * torch.sigmoid(self.fc(avg_feat)))


class PPYOLOEHead(nn.Module):
    def __init__(self, in_channels=(768, 384, 192), num_classes=80, fpn_strides=(32, 16, 8), grid_cell_scale=5.0,
                 grid_cell_offset=0.5, reg_max=16):
        super().__init__()
        self.num_classes = num_classes
        self.fpn_strides = tuple(fpn_strides)
        self.grid_cell_scale = grid_cell_scale
        self.grid_cell_offset = grid_cell_offset
        self.reg_max = reg_max
        self.stem_cls = nn.ModuleList(ESEAttn(c) for c in in_channels)
        self.stem_reg = nn.ModuleList(ESEAttn(c) for c in in_channels)
        self.pred_cls = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in in_channels)
        self.pred_reg = nn.ModuleList(nn.Conv2d(c, 4 * (reg_max + 1), 3, padding=1) for c in in_channels)
        self.proj_conv = nn.Conv2d(reg_max + 1, 1, 1, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, prior_prob=0.01):
        """PaddleDetection's head init: pred_cls weight 0 and bias -log((1 - p) / p), pred_reg weight 0 and bias 1,
        proj_conv the fixed bin values (never trained)."""
        for cls, reg in zip(self.pred_cls, self.pred_reg):
            nn.init.zeros_(cls.weight)
            nn.init.constant_(cls.bias, -math.log((1 - prior_prob) / prior_prob))
            nn.init.zeros_(reg.weight)
            nn.init.constant_(reg.bias, 1.0)
        self.init_proj()

    @torch.no_grad()
    def init_proj(self):
        self.proj_conv.weight.copy_(torch.linspace(0, self.reg_max, self.reg_max + 1).reshape(1, -1, 1, 1))
        self.proj_conv.weight.requires_grad_(False)

    def forward(self, feats):
        """feats [stride 32, 16, 8] -> (class logits [(B, C, h, w)], bin logits [(B, 4 * (reg_max + 1), h, w)])."""
        cls_logits, reg_logits = [], []
        for i, feat in enumerate(feats):
            avg_feat = spatial_mean(feat)
            cls_logits.append(self.pred_cls[i](self.stem_cls[i](feat, avg_feat) + feat))
            reg_logits.append(self.pred_reg[i](self.stem_reg[i](feat, avg_feat)))
        return cls_logits, reg_logits

    def anchor_points(self, cls_logits):
        """Anchor points (L, 2) in grid units and strides (L, 1) for the levels' feature sizes."""
        sizes = [tuple(c.shape[-2:]) for c in cls_logits]
        return eval_anchor_points(sizes, self.fpn_strides, self.grid_cell_offset, cls_logits[0].dtype,
                                  cls_logits[0].device)

    def decode_eval(self, cls_logits, reg_logits):
        """forward_eval: scores (B, C, L) (sigmoid) and distances (B, L, 4) (l, t, r, b in grid units)."""
        scores, distances = [], []
        for cls, reg in zip(cls_logits, reg_logits):
            b, _, h, w = cls.shape
            scores.append(torch.sigmoid(cls).reshape(b, self.num_classes, h * w))
            bins = reg.reshape(b, 4, self.reg_max + 1, h * w).permute(0, 2, 3, 1)
            distances.append(self.proj_conv(F.softmax(bins, dim=1)).squeeze(1))
        return torch.cat(scores, dim=-1), torch.cat(distances, dim=1)

    @staticmethod
    def decode_boxes(points, distances, stride_tensor, scale_factor):
        """batch_distance2bbox(points, distances) * stride / [sx, sy, sx, sy]; scale_factor (B, 2) is (y, x)."""
        lt, rb = distances.chunk(2, dim=-1)
        boxes = torch.cat([-lt + points, rb + points], dim=-1) * stride_tensor
        scale_y, scale_x = scale_factor.chunk(2, dim=-1)
        return boxes / torch.cat([scale_x, scale_y, scale_x, scale_y], dim=-1).reshape(-1, 1, 4)
