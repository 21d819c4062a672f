"""Delta (dx, dy, dw, dh) box coder with means/stds (mmdetection DeltaXYWHBBoxCoder, non-legacy)."""
import math

import torch


class DeltaXYWHBBoxCoder:
    def __init__(self, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0), wh_ratio_clip=16 / 1000):
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))

    def encode(self, anchors, gt_boxes):
        pw, ph = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        px, py = anchors[..., 0] + 0.5 * pw, anchors[..., 1] + 0.5 * ph
        gw, gh = gt_boxes[..., 2] - gt_boxes[..., 0], gt_boxes[..., 3] - gt_boxes[..., 1]
        gx, gy = gt_boxes[..., 0] + 0.5 * gw, gt_boxes[..., 1] + 0.5 * gh
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, anchors, deltas, max_shape=None):
        """max_shape: (height, width) to clip to, or None."""
        d = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        dx, dy = d[..., 0], d[..., 1]
        dw = d[..., 2].clamp(min=-self.max_ratio, max=self.max_ratio)
        dh = d[..., 3].clamp(min=-self.max_ratio, max=self.max_ratio)
        pw, ph = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        px, py = anchors[..., 0] + 0.5 * pw, anchors[..., 1] + 0.5 * ph
        gw, gh = pw * torch.exp(dw), ph * torch.exp(dh)
        gx, gy = px + pw * dx, py + ph * dy
        boxes = torch.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], dim=-1)
        if max_shape is not None:
            h, w = max_shape
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                                 boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
        return boxes
