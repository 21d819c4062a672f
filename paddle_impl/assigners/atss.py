"""PP-YOLOE's static assigner: ATSS as PaddleDetection 2.6's ATSSAssigner computes it, vectorised, in Paddle.

Twin of torch_ref/assigners/atss.py; float64 NumPy reference: align/numpy_ref/ppyoloe_assign.py.
Spec: ../shared/specs/ppyoloe.md A.9 (steps numbered as there) and A.14 #5 (topk ties).
"""
import paddle

from .assign_utils import (
    ATSS_IOU_EPS,
    BATCH_IOU_EPS,
    assign_from_slots,
    bbox_center,
    best_gt,
    check_float,
    check_gt_inputs,
    grid_levels,
    mask_at,
    nearest_per_level,
    paired_inside,
    paired_iou,
    scores_from_labels,
)


class ATSSAssigner:
    """Adaptive training sample selection over the ATSS anchor boxes (generate_anchors_for_grid_cell).

    __call__(anchor_bboxes (L, 4) px, num_anchors_list, gt_labels (B, n, 1) int64, gt_bboxes (B, n, 4) px,
    pad_gt_mask (B, n, 1), bg_index, pred_bboxes (B, L, 4) px or None) -> (assigned_labels (B, L) int64,
    assigned_bboxes (B, L, 4), assigned_scores (B, L, num_classes), mask_positive (B, n, L)), in the float
    dtype of the inputs, without gradient. With pred_bboxes the scores are the IoU of each positive's
    prediction with its GT, else the one-hot labels.

    Only the topk * levels candidates of a GT can be positive for it: the steps run on the candidates and are
    scattered back. The candidates are those of the native topk on each level's whole row (assign_utils.py).
    """

    def __init__(self, topk=9, num_classes=80):
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.topk = topk
        self.num_classes = num_classes

    @paddle.no_grad()
    def __call__(self, anchor_bboxes, num_anchors_list, gt_labels, gt_bboxes, pad_gt_mask, bg_index,
                 pred_bboxes=None):
        batch, n = check_gt_inputs(gt_labels, gt_bboxes, pad_gt_mask, self.num_classes, bg_index)
        check_float("anchor_bboxes", anchor_bboxes, gt_bboxes.dtype, (None, 4))
        num_anchors = anchor_bboxes.shape[0]
        num_anchors_list = [int(k) for k in num_anchors_list]
        if sum(num_anchors_list) != num_anchors or min(num_anchors_list) < self.topk:
            # PaddleDetection's topk fails on a level with fewer than topk anchors (A.9 step 3)
            raise ValueError(f"num_anchors_list {num_anchors_list} must sum to {num_anchors} with every level "
                             f">= topk ({self.topk})")
        if pred_bboxes is not None:
            check_float("pred_bboxes", pred_bboxes, gt_bboxes.dtype, (batch, num_anchors, 4))

        # 2-3. per level the topk anchors of nearest centre: (B, n, topk * levels) candidates
        anchor_centers = bbox_center(anchor_bboxes)
        levels = grid_levels(anchor_centers, num_anchors_list)
        topk_idxs = nearest_per_level(gt_bboxes, pad_gt_mask, anchor_centers, num_anchors_list, levels, self.topk)
        # is_in_topk at the candidates: one-hot 1 times pad_gt_mask (padded GTs have none)
        is_in_topk = pad_gt_mask.expand(topk_idxs.shape).clone()
        # 1, 4. IoU (eps 1e-10) of the candidates, ious * is_in_topk as PaddleDetection gathers it; threshold =
        # mean + std, the std unbiased (N - 1) as Paddle's Tensor.std is by default
        gt = gt_bboxes.unsqueeze(2)
        candidates = paddle.gather(anchor_bboxes, topk_idxs.flatten()).reshape(list(topk_idxs.shape) + [4])
        iou_candidates = paired_iou(gt, candidates, ATSS_IOU_EPS) * is_in_topk
        # (on a CPU-only build Paddle composes std from mean, sum and pow; CUDA builds run a fused var kernel)
        iou_threshold = iou_candidates.mean(axis=-1, keepdim=True) + iou_candidates.std(axis=-1, keepdim=True)
        # 5. strictly above it (the docstring's ">=" is not what the code does)
        is_in_topk = paddle.where(iou_candidates > iou_threshold, is_in_topk, paddle.zeros_like(is_in_topk))
        # 6. anchor centre strictly inside the GT (eps 1e-9); 7. positives: mask_positive at the candidates
        centers = paddle.gather(anchor_centers, topk_idxs.flatten()).reshape(list(topk_idxs.shape) + [2])
        is_in_gts = paired_inside(centers, gt).astype(gt_bboxes.dtype)
        slot_val = is_in_topk * is_in_gts * pad_gt_mask
        # 8. an anchor positive for several GTs goes to the GT of largest anchor IoU over all n GTs (padded
        # ones included, first index on ties), not only over those it was a candidate of
        def best_gt_of(batch_index, anchor_index):
            return best_gt(gt_bboxes, batch_index, paddle.gather(anchor_bboxes, anchor_index), ATSS_IOU_EPS)

        # 9. labels and boxes of argmax(mask_positive) over the GTs; bg where none
        mask_positive, gt_index, assigned_labels, assigned_bboxes = assign_from_slots(
            topk_idxs, slot_val, best_gt_of, num_anchors, gt_labels, gt_bboxes, bg_index)
        # 10. one-hot without bg, times max over GTs of (IoU(GT, prediction), eps 1e-9) * mask_positive: the
        # only non-zero term is the assigned GT's
        if pred_bboxes is None:
            weight = paddle.ones([batch, num_anchors], dtype=gt_bboxes.dtype)
        else:
            weight = paired_iou(assigned_bboxes, pred_bboxes, BATCH_IOU_EPS) * mask_at(mask_positive, gt_index)
        assigned_scores = scores_from_labels(assigned_labels, weight, self.num_classes, bg_index)
        return assigned_labels, assigned_bboxes, assigned_scores, mask_positive
