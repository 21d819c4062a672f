"""RetinaNet training losses (Paddle twin): max-IoU target assignment and the loss terms of each variant.

loss_type:
- 'focal'  (retina_r50): sigmoid focal loss (alpha 0.25, gamma 2) + smooth L1 (beta 0.11), both summed over
  the batch and divided by the number of positives (clamped >= 1);
- 'ghm'    (retina_r50_ghm): GHM-C (bins 30, momentum 0.75) and GHM-R (mu 0.02, bins 10, momentum 0.7,
  weight 10), called once per FPN level, P3 to P7 in order, on the level's flattened batch (mmdetection);
- 'aploss' (retina_r50_aploss): AP-Loss with its own assignment and custom backward on all levels at once.
Assignment (focal, ghm): MaxIoUAssigner(0.5, 0.4, low-quality matches); labels in mmdetection v2 convention
(num_classes = background); ignored anchors get label weight 0. No host synchronisation: positives enter
through weights, not through indexing.
"""
import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_impl.assigners.max_iou import MaxIoUAssigner
from paddle_impl.losses import GHMC, GHMR, FocalLoss, SmoothL1Loss, checks
from paddle_impl.losses.aploss import APLoss

LOSS_TYPES = ("focal", "ghm", "aploss")


class RetinaLoss(nn.Layer):
    def __init__(self, num_classes, box_coder, loss_type="focal"):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        checks.check_int("num_classes", num_classes, 1)
        self.num_classes, self.box_coder, self.loss_type = num_classes, box_coder, loss_type
        self.assigner = MaxIoUAssigner(0.5, 0.4, 0.0, low_quality=True)
        if loss_type == "focal":
            self.loss_cls = FocalLoss(alpha=0.25, gamma=2.0, reduction="sum")
            self.loss_bbox = SmoothL1Loss(beta=0.11, reduction="sum")
        elif loss_type == "ghm":
            self.loss_cls = GHMC(bins=30, momentum=0.75)
            self.loss_bbox = GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
        else:
            self.loss_ap = APLoss()

    def targets(self, anchors, gt_boxes, gt_labels):
        """Per image -> labels (N, A), label_weights (N, A), bbox_targets (N, A, 4), bbox_weights (N, A, 4)."""
        labels, label_weights, bbox_targets, bbox_weights = [], [], [], []
        for boxes, classes in zip(gt_boxes, gt_labels):
            res = self.assigner.assign(anchors, boxes, classes)
            pos = res.gt_inds > 0
            labels.append(paddle.where(pos, res.labels, paddle.full_like(res.labels, self.num_classes)))
            label_weights.append((res.gt_inds >= 0).astype(anchors.dtype))
            if boxes.shape[0] > 0:
                matched = boxes[(res.gt_inds - 1).clip(min=0)]
                target = paddle.where(pos.unsqueeze(1), self.box_coder.encode(anchors, matched),
                                      paddle.zeros_like(anchors))
            else:
                target = paddle.zeros_like(anchors)
            bbox_targets.append(target)
            bbox_weights.append(pos.unsqueeze(1).astype(anchors.dtype).expand([-1, 4]))
        return paddle.stack(labels), paddle.stack(label_weights), paddle.stack(bbox_targets), paddle.stack(bbox_weights)

    def forward(self, cls_scores, bbox_preds, anchors, gt_boxes, gt_labels):
        """cls_scores/bbox_preds/anchors: per level, P3 first; gt_boxes/gt_labels: per image. -> {term: loss}."""
        all_anchors = paddle.concat(anchors)
        if self.loss_type == "aploss":
            return self._aploss(paddle.concat(cls_scores, 1), paddle.concat(bbox_preds, 1), all_anchors,
                                gt_boxes, gt_labels)
        labels, label_weights, bbox_targets, bbox_weights = self.targets(all_anchors, gt_boxes, gt_labels)
        if self.loss_type == "focal":
            cls = paddle.concat(cls_scores, 1)
            one_hot = F.one_hot(labels, self.num_classes + 1)[..., :self.num_classes].astype(cls.dtype)
            num_pos = (labels < self.num_classes).astype(cls.dtype).sum().clip(min=1)
            loss_cls = self.loss_cls(cls, one_hot, label_weights.unsqueeze(-1)) / num_pos
            loss_bbox = self.loss_bbox(paddle.concat(bbox_preds, 1), bbox_targets, bbox_weights) / num_pos
            return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}
        sizes = [a.shape[0] for a in anchors]
        per_level = zip(cls_scores, bbox_preds, labels.split(sizes, 1), label_weights.split(sizes, 1),
                        bbox_targets.split(sizes, 1), bbox_weights.split(sizes, 1))
        loss_cls = loss_bbox = 0
        for cls, reg, lab, lw, tgt, bw in per_level:      # one call per FPN level, as mmdetection does
            loss_cls = loss_cls + self.loss_cls(cls.reshape([-1, self.num_classes]), lab.reshape([-1]),
                                                lw.reshape([-1]))
            loss_bbox = loss_bbox + self.loss_bbox(reg.reshape([-1, 4]), tgt.reshape([-1, 4]), bw.reshape([-1, 4]))
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    def _aploss(self, cls, reg, anchors, gt_boxes, gt_labels):
        m = max([1] + [b.shape[0] for b in gt_boxes])
        rows = []
        for b, c in zip(gt_boxes, gt_labels):
            ann = paddle.concat([b, c.astype(cls.dtype).unsqueeze(1)], axis=1)
            pad = paddle.full([m - b.shape[0], 5], -1, dtype=cls.dtype)
            rows.append(paddle.concat([ann, pad]) if m > b.shape[0] else ann)
        loss_cls, loss_bbox = self.loss_ap(cls, reg, anchors, paddle.stack(rows))
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}
