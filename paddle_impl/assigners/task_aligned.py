"""PP-YOLOE's assigner after the static epochs: TOOD's task-aligned assignment as PaddleDetection 2.6's
TaskAlignedAssigner computes it, vectorised, in Paddle.

Twin of torch_ref/assigners/task_aligned.py; float64 NumPy reference: align/numpy_ref/ppyoloe_assign.py.
Spec: ../shared/specs/ppyoloe.md A.10 (steps numbered as there), A.14 #5 (topk ties) and #14 (pow).
"""
import numpy as np
import paddle

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
        # pow takes its exponent as a float32 attribute (A.14 #14): stored rounded, as the torch twin holds it
        self.alpha = float(np.float32(alpha))
        self.beta = float(np.float32(beta))
        self.eps = float(eps)

    def _metric(self, scores, ious):
        """A.10 step 3: score^alpha * IoU^beta."""
        return scores.pow(self.alpha) * ious.pow(self.beta)

    @paddle.no_grad()
    def __call__(self, pred_scores, pred_bboxes, anchor_points, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask,
                 bg_index):
        batch, n = check_gt_inputs(gt_labels, gt_bboxes, pad_gt_mask, self.num_classes, bg_index)
        check_float("pred_scores", pred_scores, gt_bboxes.dtype, (batch, None, self.num_classes))
        num_anchors = pred_scores.shape[1]
        check_float("pred_bboxes", pred_bboxes, gt_bboxes.dtype, (batch, num_anchors, 4))
        check_float("anchor_points", anchor_points, gt_bboxes.dtype, (num_anchors, 2))
        if num_anchors < self.topk:
            raise ValueError(f"need at least topk ({self.topk}) anchors, got {num_anchors}")
        k, dtype = self.topk, gt_bboxes.dtype

        # 4. the (GT, anchor) pairs of each real GT and the anchor points strictly inside it (eps 1e-9); padded
        # GTs end with no positive anyway
        counts_list = [int(c) for c in num_anchors_list]
        levels = grid_levels(anchor_points, counts_list) if sum(counts_list) == num_anchors else None
        rows, columns, a_i, counts = inside_pairs(anchor_points, levels, gt_bboxes, pad_gt_mask)
        b_i = rows // n
        # 1-3. IoU (eps 1e-9), class score and metric of those pairs; metric * is_in_gts is 0 elsewhere
        pair_anchor = b_i * num_anchors + a_i
        pair_labels = paddle.gather(gt_labels.reshape([-1]), rows)
        pair_scores = paddle.gather(pred_scores.reshape([-1]), pair_anchor * self.num_classes + pair_labels)
        pair_ious = paired_iou(paddle.gather(gt_bboxes.reshape([-1, 4]), rows),
                               paddle.gather(pred_bboxes.reshape([-1, 4]), pair_anchor), BATCH_IOU_EPS)
        metric = self._metric(pair_scores, pair_ious)
        # each GT's inside metrics in a row of a padded (B * n, width) table, -1 after them
        width = max(int(counts.max()), k + 1)
        values = paddle.full([batch * n, width], -1.0, dtype=dtype).index_put_((rows, columns), metric)
        anchors = paddle.zeros([batch * n, width], dtype="int64").index_put_((rows, columns), a_i)
        # 5. topk of the inside metrics; positive: selected and inside (an inside anchor of metric 0 is
        # positive when the topk reaches it: PaddleDetection quirk)
        top_values, top_columns = paddle.topk(values, k + 1, axis=-1)
        slot_idx = paddle.take_along_axis(anchors, top_columns[:, :k], axis=1, broadcast=False)
        slot_inside = top_values[:, :k] >= 0
        nonzero = (values > 0).astype("int64").sum(axis=-1)
        tie_rule = paddle.where(nonzero >= k, top_values[:, k - 1] == top_values[:, k], counts > nonzero)
        if bool(tie_rule.any()):
            # the native topk over the whole row of metric * is_in_gts decides, as in PaddleDetection
            tied = paddle.nonzero(tie_rule).squeeze(1)
            tied_values, tied_anchors = paddle.gather(values, tied), paddle.gather(anchors, tied)
            real = tied_values >= 0
            full = paddle.zeros([tied.shape[0], num_anchors + 1], dtype=dtype)
            full.put_along_axis_(paddle.where(real, tied_anchors, paddle.full_like(tied_anchors, num_anchors)),
                                 paddle.where(real, tied_values, paddle.zeros_like(tied_values)), axis=1,
                                 broadcast=False)
            native = paddle.topk(full[:, :num_anchors], k, axis=-1)[1]
            slot_idx = paddle.scatter(slot_idx, tied, native, overwrite=True)
            boxes = paddle.gather(gt_bboxes.reshape([batch * n, 1, 4]), tied)
            points = paddle.gather(anchor_points, native.flatten()).reshape(list(native.shape) + [2])
            slot_inside = paddle.scatter(slot_inside.astype("int32"), tied,
                                         paired_inside(points, boxes).astype("int32"), overwrite=True) > 0
        # 6. mask_positive = is_in_topk (1 * pad_gt_mask) * is_in_gts * pad_gt_mask
        slot_idx = slot_idx.reshape([batch, n, k])
        pad = pad_gt_mask.expand([batch, n, k])
        slot_val = pad * slot_inside.reshape([batch, n, k]).astype(dtype) * pad
        # several GTs: the GT of largest prediction IoU over all n GTs (not only those the anchor was positive for)
        def best_gt_of(batch_index, anchor_index):
            boxes = paddle.gather(pred_bboxes.reshape([-1, 4]), batch_index * num_anchors + anchor_index)
            return best_gt(gt_bboxes, batch_index, boxes, BATCH_IOU_EPS)

        # 7. labels and boxes of argmax(mask_positive) over the GTs; bg where none
        mask_positive, gt_index, assigned_labels, assigned_bboxes = assign_from_slots(
            slot_idx, slot_val, best_gt_of, num_anchors, gt_labels, gt_bboxes, bg_index)
        # 8. score target. An anchor's only non-zero mask entry is its assigned GT's, so per GT the maxima over
        # anchors of metric * mask and IoU * mask are maxima over its assigned anchors (0 if none), and per anchor
        # the max over GTs of metric * mask / (max + eps) * max_iou is its assigned GT's term. The winner of a
        # multi-GT anchor brings its raw metric there even when the anchor lies outside it (PaddleDetection).
        maskval = mask_at(mask_positive, gt_index)
        ious = paired_iou(assigned_bboxes, pred_bboxes, BATCH_IOU_EPS)
        gt_label = paddle.take_along_axis(gt_labels.squeeze(-1), gt_index, axis=1, broadcast=False)
        scores = paddle.take_along_axis(pred_scores, gt_label.unsqueeze(-1), axis=2, broadcast=False).squeeze(-1)
        metric = self._metric(scores, ious) * maskval
        ious = ious * maskval
        max_metric = paddle.zeros([batch, n], dtype=dtype)
        max_metric.put_along_axis_(gt_index, metric, axis=1, reduce="amax", broadcast=False)
        max_iou = paddle.zeros([batch, n], dtype=dtype)
        max_iou.put_along_axis_(gt_index, ious, axis=1, reduce="amax", broadcast=False)
        target = (metric / (paddle.take_along_axis(max_metric, gt_index, axis=1, broadcast=False) + self.eps)
                  * paddle.take_along_axis(max_iou, gt_index, axis=1, broadcast=False))
        assigned_scores = scores_from_labels(assigned_labels, target, self.num_classes, bg_index)
        return assigned_labels, assigned_bboxes, assigned_scores, mask_positive
