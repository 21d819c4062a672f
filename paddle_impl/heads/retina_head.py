"""RetinaNet head (Paddle twin): 4 conv+ReLU per branch, shared across levels; 9 anchors; prior 0.01."""
import math

from paddle import nn


def _branch(in_channels, feat_channels, num_convs):
    layers = []
    for i in range(num_convs):
        layers += [nn.Conv2D(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


class RetinaHead(nn.Layer):
    def __init__(self, num_classes=80, in_channels=256, feat_channels=256, num_anchors=9, num_convs=4,
                 prior_prob=0.01):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_convs = _branch(in_channels, feat_channels, num_convs)
        self.reg_convs = _branch(in_channels, feat_channels, num_convs)
        self.retina_cls = nn.Conv2D(feat_channels, num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2D(feat_channels, num_anchors * 4, 3, padding=1)
        self.init_weights(prior_prob)

    def init_weights(self, prior_prob):
        normal = nn.initializer.Normal(std=0.01)
        for m in self.sublayers():
            if isinstance(m, nn.Conv2D):
                normal(m.weight)
                nn.initializer.Constant(0.0)(m.bias)
        nn.initializer.Constant(-math.log((1 - prior_prob) / prior_prob))(self.retina_cls.bias)

    def _flatten(self, x, channels):
        # (N, A*K, H, W) -> (N, H*W*A, K): location-major, anchor-minor, matching the anchor order.
        n, _, h, w = x.shape
        return x.transpose([0, 2, 3, 1]).reshape([n, h * w * self.num_anchors, channels])

    def forward(self, feats):
        """Returns per-level (N, H*W*A, num_classes) logits and (N, H*W*A, 4) deltas, P3 first."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            cls_scores.append(self._flatten(self.retina_cls(self.cls_convs(x)), self.num_classes))
            bbox_preds.append(self._flatten(self.retina_reg(self.reg_convs(x)), 4))
        return cls_scores, bbox_preds
