"""Delta (dx, dy, dw, dh) box coder with means/stds (Paddle twin; mmdetection DeltaXYWHBBoxCoder)."""
import math

import paddle


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
        deltas = paddle.stack([(gx - px) / pw, (gy - py) / ph, paddle.log(gw / pw), paddle.log(gh / ph)], axis=-1)
        means = paddle.to_tensor(self.means, dtype=deltas.dtype)
        stds = paddle.to_tensor(self.stds, dtype=deltas.dtype)
        return (deltas - means) / stds

    def decode(self, anchors, deltas, max_shape=None):
        """max_shape: (height, width) to clip to, or None."""
        d = deltas * paddle.to_tensor(self.stds, dtype=deltas.dtype) + paddle.to_tensor(self.means, dtype=deltas.dtype)
        dx, dy = d[..., 0], d[..., 1]
        dw = d[..., 2].clip(min=-self.max_ratio, max=self.max_ratio)
        dh = d[..., 3].clip(min=-self.max_ratio, max=self.max_ratio)
        pw, ph = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        px, py = anchors[..., 0] + 0.5 * pw, anchors[..., 1] + 0.5 * ph
        gw, gh = pw * paddle.exp(dw), ph * paddle.exp(dh)
        gx, gy = px + pw * dx, py + ph * dy
        boxes = paddle.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], axis=-1)
        if max_shape is not None:
            h, w = max_shape
            boxes = paddle.stack([boxes[..., 0].clip(0, w), boxes[..., 1].clip(0, h),
                                  boxes[..., 2].clip(0, w), boxes[..., 3].clip(0, h)], axis=-1)
        return boxes
