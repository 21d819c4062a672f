"""RetinaNet training losses: max-IoU target assignment and the loss terms of each variant.

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
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.assigners.max_iou import MaxIoUAssigner
from torch_ref.losses import GHMC, GHMR, FocalLoss, SmoothL1Loss, checks
from torch_ref.losses.aploss import APLoss

LOSS_TYPES = ("focal", "ghm", "aploss")


class RetinaLoss(nn.Module):
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
            labels.append(torch.where(pos, res.labels, self.num_classes))
            label_weights.append((res.gt_inds >= 0).to(anchors.dtype))
            if boxes.shape[0] > 0:
                matched = boxes[(res.gt_inds - 1).clamp(min=0)]
                target = torch.where(pos[:, None], self.box_coder.encode(anchors, matched), 0)
            else:
                target = torch.zeros_like(anchors)
            bbox_targets.append(target)
            bbox_weights.append(pos[:, None].to(anchors.dtype).expand(-1, 4))
        return torch.stack(labels), torch.stack(label_weights), torch.stack(bbox_targets), torch.stack(bbox_weights)

    def forward(self, cls_scores, bbox_preds, anchors, gt_boxes, gt_labels):
        """cls_scores/bbox_preds/anchors: per level, P3 first; gt_boxes/gt_labels: per image. -> {term: loss}."""
        all_anchors = torch.cat(anchors)
        if self.loss_type == "aploss":
            return self._aploss(torch.cat(cls_scores, 1), torch.cat(bbox_preds, 1), all_anchors, gt_boxes, gt_labels)
        labels, label_weights, bbox_targets, bbox_weights = self.targets(all_anchors, gt_boxes, gt_labels)
        if self.loss_type == "focal":
            cls = torch.cat(cls_scores, 1)
            one_hot = F.one_hot(labels, self.num_classes + 1)[..., :self.num_classes].to(cls.dtype)
            num_pos = (labels < self.num_classes).sum().clamp(min=1).to(cls.dtype)
            loss_cls = self.loss_cls(cls, one_hot, label_weights[..., None]) / num_pos
            loss_bbox = self.loss_bbox(torch.cat(bbox_preds, 1), bbox_targets, bbox_weights) / num_pos
            return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}
        sizes = [a.shape[0] for a in anchors]
        per_level = zip(cls_scores, bbox_preds, labels.split(sizes, 1), label_weights.split(sizes, 1),
                        bbox_targets.split(sizes, 1), bbox_weights.split(sizes, 1))
        loss_cls = loss_bbox = 0
        for cls, reg, lab, lw, tgt, bw in per_level:      # one call per FPN level, as mmdetection does
            loss_cls = loss_cls + self.loss_cls(cls.reshape(-1, self.num_classes), lab.reshape(-1), lw.reshape(-1))
            loss_bbox = loss_bbox + self.loss_bbox(reg.reshape(-1, 4), tgt.reshape(-1, 4), bw.reshape(-1, 4))
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    def _aploss(self, cls, reg, anchors, gt_boxes, gt_labels):
        m = max([1] + [b.shape[0] for b in gt_boxes])
        ann = cls.new_full((len(gt_boxes), m, 5), -1)
        for i, (b, c) in enumerate(zip(gt_boxes, gt_labels)):
            ann[i, :b.shape[0], :4] = b
            ann[i, :b.shape[0], 4] = c.to(cls.dtype)
        loss_cls, loss_bbox = self.loss_ap(cls, reg, anchors, ann)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}
