"""PP-YOLOE's assigner after the static epochs: TOOD's task-aligned assignment as PaddleDetection 2.6's
TaskAlignedAssigner computes it, vectorised, in torch.

Twin: paddle_impl/assigners/task_aligned.py; float64 NumPy reference: align/numpy_ref/ppyoloe_assign.py.
Spec: ../shared/specs/ppyoloe.md A.10 (steps numbered as there), A.14 #5 (topk ties) and #14 (pow).
"""
import numpy as np
import torch

from .assign_utils import (
    BATCH_IOU_EPS,
    assign_from_slots,
    best_gt,
    check_float,
    check_gt_inputs,
    grid_levels,
    inside_pairs,
    mask_at,
    paired_inside,
    paired_iou,
    scores_from_labels,
)


class TaskAlignedAssigner:
    """Each GT takes the topk anchors of largest score^alpha * IoU^beta among those whose point lies inside it.

    __call__(pred_scores (B, L, C) probabilities, pred_bboxes (B, L, 4) px, anchor_points (L, 2) px,
    num_anchors_list, gt_labels (B, n, 1) int64, gt_bboxes (B, n, 4) px, pad_gt_mask (B, n, 1), bg_index)
    -> (assigned_labels (B, L) int64, assigned_bboxes (B, L, 4), assigned_scores (B, L, C), mask_positive
    (B, n, L)), in the inputs' float dtype, without gradient. The topk runs over all L anchors, as in
    PaddleDetection; num_anchors_list only tells where each level's grid of points starts.

    PaddleDetection takes the topk over all L of metric * is_in_gts, which is 0 outside the GT. Here the metric
    is computed for the (GT, inside anchor) pairs only (assign_utils.inside_pairs) and the topk runs over those;
    a GT whose selection could depend on topk's tie rule (a tie at the topk-th place, or fewer than topk non-zero
    metrics while an inside anchor has metric 0) gets the native topk on its whole row instead, so the outcome
    is the native one.
    """

    def __init__(self, topk=13, alpha=1.0, beta=6.0, eps=1e-9, num_classes=80):
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        for name, value in (("alpha", alpha), ("beta", beta), ("eps", eps)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.topk = topk
        self.num_classes = num_classes
        # Paddle's pow takes its exponent as a float32 attribute (A.14 #14): exact for 1 and 6, not for 1/3
        self.alpha = float(np.float32(alpha))
        self.beta = float(np.float32(beta))
        self.eps = float(eps)

    def _metric(self, scores, ious):
        """A.10 step 3: score^alpha * IoU^beta."""
        return scores.pow(self.alpha) * ious.pow(self.beta)

    @torch.no_grad()
    def __call__(self, pred_scores, pred_bboxes, anchor_points, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask,
                 bg_index):
        batch, n = check_gt_inputs(gt_labels, gt_bboxes, pad_gt_mask, self.num_classes, bg_index)
        check_float("pred_scores", pred_scores, gt_bboxes.dtype, (batch, None, self.num_classes))
        num_anchors = pred_scores.shape[1]
        check_float("pred_bboxes", pred_bboxes, gt_bboxes.dtype, (batch, num_anchors, 4))
        check_float("anchor_points", anchor_points, gt_bboxes.dtype, (num_anchors, 2))
        if num_anchors < self.topk:
            raise ValueError(f"need at least topk ({self.topk}) anchors, got {num_anchors}")
        k, dtype, device = self.topk, gt_bboxes.dtype, gt_bboxes.device

        # 4. the (GT, anchor) pairs of each real GT and the anchor points strictly inside it (eps 1e-9); padded
        # GTs end with no positive anyway
        counts_list = [int(c) for c in num_anchors_list]
        levels = grid_levels(anchor_points, counts_list) if sum(counts_list) == num_anchors else None
        rows, columns, a_i, counts = inside_pairs(anchor_points, levels, gt_bboxes, pad_gt_mask)
        b_i = rows // n
        # 1-3. IoU (eps 1e-9), class score and metric of those pairs; metric * is_in_gts is 0 elsewhere
        pair_anchor = b_i * num_anchors + a_i
        pair_scores = torch.take(pred_scores, pair_anchor * self.num_classes + torch.take(gt_labels, rows))
        pair_ious = paired_iou(gt_bboxes.reshape(-1, 4).index_select(0, rows),
                               pred_bboxes.reshape(-1, 4).index_select(0, pair_anchor), BATCH_IOU_EPS)
        metric = self._metric(pair_scores, pair_ious)
        # each GT's inside metrics in a row of a padded (B * n, width) table, -1 after them
        width = max(int(counts.max()), k + 1)
        values = torch.full((batch * n, width), -1.0, dtype=dtype, device=device).index_put_((rows, columns), metric)
        anchors = torch.zeros((batch * n, width), dtype=torch.int64, device=device).index_put_((rows, columns), a_i)
        # 5. topk of the inside metrics; positive: selected and inside (an inside anchor of metric 0 is
        # positive when the topk reaches it: PaddleDetection quirk)
        top_values, top_columns = torch.topk(values, k + 1, dim=-1)
        slot_idx = torch.gather(anchors, 1, top_columns[:, :k])
        slot_inside = top_values[:, :k] >= 0
        nonzero = (values > 0).sum(dim=-1)
        tie_rule = torch.where(nonzero >= k, top_values[:, k - 1] == top_values[:, k], counts > nonzero)
        if bool(tie_rule.any()):
            # the native topk over the whole row of metric * is_in_gts decides, as in PaddleDetection
            tied = tie_rule.nonzero().squeeze(1)
            full = torch.zeros((tied.shape[0], num_anchors + 1), dtype=dtype, device=device)
            real = values[tied] >= 0
            full.scatter_(1, torch.where(real, anchors[tied], num_anchors), torch.where(real, values[tied], 0.0))
            native = torch.topk(full[:, :num_anchors], k, dim=-1).indices
            slot_idx[tied] = native
            boxes = gt_bboxes.reshape(batch * n, 1, 4)[tied]
            slot_inside[tied] = paired_inside(anchor_points[native], boxes)
        # 6. mask_positive = is_in_topk (1 * pad_gt_mask) * is_in_gts * pad_gt_mask
        slot_idx = slot_idx.reshape(batch, n, k)
        pad = pad_gt_mask.expand(-1, -1, k)
        slot_val = pad * slot_inside.reshape(batch, n, k).to(dtype) * pad
        # several GTs: the GT of largest prediction IoU over all n GTs (not only those the anchor was positive for)
        def best_gt_of(batch_index, anchor_index):
            return best_gt(gt_bboxes, batch_index, pred_bboxes[batch_index, anchor_index], BATCH_IOU_EPS)

        # 7. labels and boxes of argmax(mask_positive) over the GTs; bg where none
        mask_positive, gt_index, assigned_labels, assigned_bboxes = assign_from_slots(
            slot_idx, slot_val, best_gt_of, num_anchors, gt_labels, gt_bboxes, bg_index)
        # 8. score target. An anchor's only non-zero mask entry is its assigned GT's, so per GT the maxima over
        # anchors of metric * mask and IoU * mask are maxima over its assigned anchors (0 if none), and per anchor
        # the max over GTs of metric * mask / (max + eps) * max_iou is its assigned GT's term. The winner of a
        # multi-GT anchor brings its raw metric there even when the anchor lies outside it (PaddleDetection).
        maskval = mask_at(mask_positive, gt_index)
        ious = paired_iou(assigned_bboxes, pred_bboxes, BATCH_IOU_EPS)
        gt_label = torch.gather(gt_labels.squeeze(-1), 1, gt_index)
        scores = torch.gather(pred_scores, 2, gt_label.unsqueeze(-1)).squeeze(-1)
        metric = self._metric(scores, ious) * maskval
        ious = ious * maskval
        max_metric = torch.zeros(batch, n, dtype=dtype, device=device).scatter_reduce_(1, gt_index, metric, "amax")
        max_iou = torch.zeros(batch, n, dtype=dtype, device=device).scatter_reduce_(1, gt_index, ious, "amax")
        target = metric / (torch.gather(max_metric, 1, gt_index) + self.eps) * torch.gather(max_iou, 1, gt_index)
        assigned_scores = scores_from_labels(assigned_labels, target, self.num_classes, bg_index)
        return assigned_labels, assigned_bboxes, assigned_scores, mask_positive
