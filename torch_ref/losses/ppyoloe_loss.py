"""PP-YOLOE's detection loss, PPYOLOEHead.get_loss / get_loss_from_assign (twin: paddle_impl/losses/ppyoloe_loss.py).

../shared/specs/ppyoloe.md A.5 (training flattening and decode), A.11 (the loss) and A.14 (Paddle semantics).
The assigner's outputs (labels, boxes in pixels, IoU-aware scores) are inputs; boxes and distances are compared
in grid units. total = 1.0 VFL + 2.5 GIoU + 0.5 DFL, each divided by S = max(sum of the assigned scores, 1); L1 is
logged only. The VFL weight is not detached (Paddle's BCE passes gradient into its weight), see varifocal.py.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .dfl import distribution_focal_loss
from .giou import giou_loss
from .smooth_l1 import l1_loss
from .varifocal import varifocal_loss

LOSS_KEYS = ("class", "iou", "dfl")


def check_config(num_classes, reg_max, loss_weight):
    checks.check_int("num_classes", num_classes, 1)
    checks.check_int("reg_max", reg_max, 1)
    if not isinstance(loss_weight, dict) or set(loss_weight) != set(LOSS_KEYS):
        raise ValueError(f"loss_weight must be a dict with the keys {LOSS_KEYS}, got {loss_weight!r}")
    for key in LOSS_KEYS:
        checks.check_number(f"loss_weight[{key!r}]", loss_weight[key], 0)


def batch_distance2bbox(points, distance):
    """x1y1 = points - (l, t), x2y2 = points + (r, b); PaddleDetection writes -lt + points (the same value)."""
    lt, rb = distance.chunk(2, dim=-1)
    return torch.cat([-lt + points, rb + points], dim=-1)


def bbox2distance(points, bbox, max_dist):
    """(points - x1y1, x2y2 - points) clipped to [0, max_dist] (PP-YOLOE's _bbox2distance, max reg_max - 0.01)."""
    x1y1, x2y2 = bbox.chunk(2, dim=-1)
    return torch.cat([points - x1y1, x2y2 - points], dim=-1).clamp(0, max_dist)


class PPYOLOELoss(nn.Module):
    def __init__(self, num_classes=80, reg_max=16, loss_weight={"class": 1.0, "iou": 2.5, "dfl": 0.5}):
        super().__init__()
        check_config(num_classes, reg_max, loss_weight)
        self.num_classes, self.reg_max, self.loss_weight = num_classes, reg_max, dict(loss_weight)

    def flatten(self, cls_logits, reg_logits):
        """Per-level [B, C, h, w] and [B, 4 (reg_max + 1), h, w] (head order 32, 16, 8) -> pred_scores [B, L, C]
        (sigmoid) and pred_distri [B, L, 4 (reg_max + 1)]; row-major within a level (A.5)."""
        scores = [torch.sigmoid(c).flatten(2).permute(0, 2, 1) for c in cls_logits]
        distri = [r.flatten(2).permute(0, 2, 1) for r in reg_logits]
        return torch.cat(scores, dim=1), torch.cat(distri, dim=1)

    def decode(self, anchor_points_grid, pred_distri):
        """_bbox_decode: softmax over each side's bins, expectation over linspace(0, reg_max) (proj_conv), then
        batch_distance2bbox; [L, 2] points and [B, L, 4 (reg_max + 1)] -> [B, L, 4] boxes in grid units."""
        b, n, _ = pred_distri.shape
        prob = F.softmax(pred_distri.reshape(b, n, 4, self.reg_max + 1), dim=-1)
        proj = torch.linspace(0, self.reg_max, self.reg_max + 1, dtype=prob.dtype, device=prob.device)
        return batch_distance2bbox(anchor_points_grid, (prob * proj).sum(-1))

    def forward(self, pred_scores, pred_distri, pred_bboxes, anchor_points_grid, assigned_labels, assigned_bboxes,
                assigned_scores, stride_tensor):
        """A.11. pred_bboxes and anchor_points_grid in grid units, assigned_bboxes in pixels, assigned_labels [B, L]
        int64 with num_classes for background -> {loss, loss_cls, loss_iou, loss_dfl, loss_l1} (0-dim)."""
        checks.check_integer("assigned_labels", assigned_labels, ndim=2)
        # the assigner runs without gradient: its outputs are targets
        assigned_bboxes = assigned_bboxes.detach() / stride_tensor
        assigned_scores = assigned_scores.detach()
        one_hot = F.one_hot(assigned_labels, self.num_classes + 1)[..., :-1]
        loss_cls = varifocal_loss(pred_scores, assigned_scores, one_hot)
        scores_sum = assigned_scores.sum().clamp(min=1.0)
        loss_cls = loss_cls / scores_sum

        mask = assigned_labels != self.num_classes
        if bool(mask.any()):
            pred_bboxes_pos, assigned_bboxes_pos = pred_bboxes[mask], assigned_bboxes[mask]
            bbox_weight = assigned_scores.sum(-1)[mask]
            loss_l1 = l1_loss(pred_bboxes_pos, assigned_bboxes_pos, reduction="mean")
            loss_iou = giou_loss(pred_bboxes_pos, assigned_bboxes_pos, weight=bbox_weight, reduction="sum")
            loss_iou = loss_iou / scores_sum
            pred_dist_pos = pred_distri[mask].reshape(-1, 4, self.reg_max + 1)
            assigned_ltrb = bbox2distance(anchor_points_grid, assigned_bboxes, self.reg_max - 0.01)
            loss_dfl = distribution_focal_loss(pred_dist_pos, assigned_ltrb[mask], self.reg_max,
                                               weight=bbox_weight.unsqueeze(-1), reduction="sum")
            loss_dfl = loss_dfl / scores_sum
        else:
            # PaddleDetection: zeros for iou and l1; 0 * sum(pred_dist) keeps the bins in the graph
            loss_l1 = loss_iou = pred_scores.new_zeros(())
            loss_dfl = pred_distri.sum() * 0.0
        loss = (self.loss_weight["class"] * loss_cls + self.loss_weight["iou"] * loss_iou
                + self.loss_weight["dfl"] * loss_dfl)
        return {"loss": loss, "loss_cls": loss_cls, "loss_iou": loss_iou, "loss_dfl": loss_dfl, "loss_l1": loss_l1}
