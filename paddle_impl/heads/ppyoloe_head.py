"""PPYOLOEHead (ET-head) as PaddleDetection 2.6 builds it (twin: torch_ref/heads/ppyoloe_head.py).

Per level (strides 32, 16, 8): one shared average of the feature feeds both ESEAttn stems; the class branch
has a residual (pred_cls(stem_cls(f, avg) + f)), the box branch predicts 4 x (reg_max + 1) distance bins,
channel = side * (reg_max + 1) + bin, sides (l, t, r, b). Distances are the expectation over the softmax of
the bins (proj_conv, a fixed linspace(0, reg_max) 1x1 conv), in grid units.
"""
import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_impl.backbones.cspresnet import ConvBNLayer
from paddle_impl.priors.grid_cells import eval_anchor_points


def spatial_mean(x):
    """F.adaptive_avg_pool2d(x, 1) (PaddleDetection's call) as a mean over H and W: Paddle 3.3.1's
    AdaptiveAvgPool2D float64 backward scales by float32(1/(H*W)) (tests/test_backward.py shows the defect)."""
    return x.mean((2, 3), keepdim=True)


class ESEAttn(nn.Layer):
    """conv(feat * sigmoid(fc(avg))): fc a 1x1 conv with bias (weights ~ N(0, 0.001)), conv a 1x1 ConvBN swish."""

    def __init__(self, feat_channels):
        super().__init__()
        self.fc = nn.Conv2D(feat_channels, feat_channels, 1)
        self.conv = ConvBNLayer(feat_channels, feat_channels, 1)
        nn.initializer.Normal(std=0.001)(self.fc.weight)

    def forward(self, feat, avg_feat):
        return self.conv(feat * F.sigmoid(self.fc(avg_feat)))


class PPYOLOEHead(nn.Layer):
    def __init__(self, in_channels=(768, 384, 192), num_classes=80, fpn_strides=(32, 16, 8), grid_cell_scale=5.0,
                 grid_cell_offset=0.5, reg_max=16):
        super().__init__()
        self.num_classes = num_classes
        self.fpn_strides = tuple(fpn_strides)
        self.grid_cell_scale = grid_cell_scale
        self.grid_cell_offset = grid_cell_offset
        self.reg_max = reg_max
        self.stem_cls = nn.LayerList([ESEAttn(c) for c in in_channels])
        self.stem_reg = nn.LayerList([ESEAttn(c) for c in in_channels])
        self.pred_cls = nn.LayerList([nn.Conv2D(c, num_classes, 3, padding=1) for c in in_channels])
        self.pred_reg = nn.LayerList([nn.Conv2D(c, 4 * (reg_max + 1), 3, padding=1) for c in in_channels])
        self.proj_conv = nn.Conv2D(reg_max + 1, 1, 1, bias_attr=False)
        self.init_weights()

    @paddle.no_grad()
    def init_weights(self, prior_prob=0.01):
        """PaddleDetection's head init: pred_cls weight 0 and bias -log((1 - p) / p), pred_reg weight 0 and bias 1,
        proj_conv the fixed bin values (never trained)."""
        for cls, reg in zip(self.pred_cls, self.pred_reg):
            nn.initializer.Constant(0.0)(cls.weight)
            nn.initializer.Constant(-math.log((1 - prior_prob) / prior_prob))(cls.bias)
            nn.initializer.Constant(0.0)(reg.weight)
            nn.initializer.Constant(1.0)(reg.bias)
        self.init_proj()

    @paddle.no_grad()
    def init_proj(self):
        bins = paddle.linspace(0, self.reg_max, self.reg_max + 1, dtype=self.proj_conv.weight.dtype)
        self.proj_conv.weight.set_value(bins.reshape([1, -1, 1, 1]))
        self.proj_conv.weight.stop_gradient = True

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
        return eval_anchor_points(sizes, self.fpn_strides, self.grid_cell_offset, cls_logits[0].dtype)

    def decode_eval(self, cls_logits, reg_logits):
        """forward_eval: scores (B, C, L) (sigmoid) and distances (B, L, 4) (l, t, r, b in grid units)."""
        scores, distances = [], []
        for cls, reg in zip(cls_logits, reg_logits):
            b, _, h, w = cls.shape
            scores.append(F.sigmoid(cls).reshape([b, self.num_classes, h * w]))
            bins = reg.reshape([b, 4, self.reg_max + 1, h * w]).transpose([0, 2, 3, 1])
            distances.append(self.proj_conv(F.softmax(bins, axis=1)).squeeze(1))
        return paddle.concat(scores, axis=-1), paddle.concat(distances, axis=1)

    @staticmethod
    def decode_boxes(points, distances, stride_tensor, scale_factor):
        """batch_distance2bbox(points, distances) * stride / [sx, sy, sx, sy]; scale_factor (B, 2) is (y, x)."""
        lt, rb = paddle.split(distances, 2, axis=-1)
        boxes = paddle.concat([-lt + points, rb + points], axis=-1) * stride_tensor
        scale_y, scale_x = paddle.split(scale_factor, 2, axis=-1)
        return boxes / paddle.concat([scale_x, scale_y, scale_x, scale_y], axis=-1).reshape([-1, 1, 4])
