"""Max-IoU anchor assignment (mmdetection v2 MaxIoUAssigner semantics), vectorised, in Paddle.

Twin of torch_ref/assigners/max_iou.py; float64 NumPy reference: align/numpy_ref/max_iou.py.
"""
from typing import NamedTuple, Optional

import paddle

from paddle_impl.ops.iou import box_iou  # also re-exported by paddle_impl.assigners


class AssignResult(NamedTuple):
    gt_inds: paddle.Tensor           # (A,) int64: 0 negative, -1 ignored, k + 1 matched to gt k
    max_overlaps: paddle.Tensor      # (A,) best IoU of each anchor over the gts (0 without gts)
    labels: Optional[paddle.Tensor]  # (A,) int64 label of the matched gt, -1 where not positive


IOU_EPS = 1e-6  # mmdet BboxOverlaps2D clamps the union to >= eps


def bbox_overlaps(boxes1, boxes2, eps=IOU_EPS):
    """(N, 4) x (M, 4) -> (N, M) IoU, no +1, union clamped >= eps (mmdet)."""
    return box_iou(boxes1, boxes2, eps)


def _check_boxes(name, boxes):
    if not isinstance(boxes, paddle.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be a (N, 4) tensor, got "
                         f"{tuple(boxes.shape) if isinstance(boxes, paddle.Tensor) else type(boxes).__name__}")
    if not paddle.is_floating_point(boxes):
        raise ValueError(f"{name} must be floating point, got {boxes.dtype}")


def _check_thr(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class MaxIoUAssigner:
    """Each anchor goes to its best gt (first maximal index on ties): positive if IoU >= pos_iou_thr,
    negative if 0 <= IoU < neg_iou_thr, otherwise ignored. With low_quality, every anchor attaining a gt's
    maximum IoU (when that maximum >= min_pos_iou) becomes positive for that gt, later gts overriding
    earlier ones, as mmdetection's per-gt loop does. Like mmdetection with min_pos_iou=0, a gt that overlaps
    no anchor at all (max IoU 0) claims every anchor with IoU 0 to it. IoU: bbox_overlaps (union >= 1e-6).
    Libra R-CNN: RPN (0.7, 0.3, 0.3, low_quality), R-CNN (0.5, 0.5, 0.5, low_quality=False).
    """

    def __init__(self, pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, low_quality=True):
        self.pos_iou_thr = _check_thr("pos_iou_thr", pos_iou_thr)
        self.neg_iou_thr = _check_thr("neg_iou_thr", neg_iou_thr)
        self.min_pos_iou = _check_thr("min_pos_iou", min_pos_iou)
        if self.neg_iou_thr > self.pos_iou_thr:
            raise ValueError(f"neg_iou_thr ({neg_iou_thr}) must not exceed pos_iou_thr ({pos_iou_thr})")
        self.low_quality = bool(low_quality)

    def assign(self, anchors, gt_boxes, gt_labels=None):
        _check_boxes("anchors", anchors)
        _check_boxes("gt_boxes", gt_boxes)
        if gt_boxes.dtype != anchors.dtype:
            raise ValueError(f"gt_boxes dtype {gt_boxes.dtype} must match anchors dtype {anchors.dtype}")
        if gt_labels is not None and (not isinstance(gt_labels, paddle.Tensor) or gt_labels.ndim != 1
                                      or gt_labels.shape[0] != gt_boxes.shape[0]):
            raise ValueError(f"gt_labels must be a ({gt_boxes.shape[0]},) tensor")
        num_gts, num_anchors = gt_boxes.shape[0], anchors.shape[0]
        if num_gts == 0 or num_anchors == 0:
            gt_inds = paddle.full([num_anchors], 0 if num_gts == 0 else -1, dtype="int64")
            labels = None if gt_labels is None else paddle.full([num_anchors], -1, dtype="int64")
            return AssignResult(gt_inds, paddle.zeros([num_anchors], dtype=anchors.dtype), labels)
        return self.assign_overlaps(bbox_overlaps(gt_boxes, anchors), gt_labels)

    def assign_overlaps(self, overlaps, gt_labels=None):
        """overlaps: (G, A) IoU of every gt with every anchor, G >= 1."""
        gt_range = paddle.arange(overlaps.shape[0], dtype="int64")[:, None]
        max_overlaps = overlaps.max(axis=0)
        # first gt reaching the max: the smallest index among the maximal entries
        argmax = paddle.where(overlaps >= max_overlaps, gt_range, overlaps.shape[0]).min(axis=0)
        gt_inds = paddle.full_like(argmax, -1)
        gt_inds = paddle.where((max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr), 0, gt_inds)
        gt_inds = paddle.where(max_overlaps >= self.pos_iou_thr, argmax + 1, gt_inds)
        if self.low_quality:
            gt_max = overlaps.max(axis=1, keepdim=True)
            # '>=' against the max is exact equality; Paddle's float '==' has been |a - b| < 1e-8
            # (earlier releases; align/known_differences.py)
            hit = (overlaps >= gt_max) & (gt_max >= self.min_pos_iou)
            # the loop over gts assigns each anchor to the last gt whose max it attains
            last = paddle.where(hit, gt_range, -1).max(axis=0)
            gt_inds = paddle.where(last >= 0, last + 1, gt_inds)
        labels = None
        if gt_labels is not None:
            labels = paddle.where(gt_inds > 0, gt_labels.astype("int64")[paddle.clip(gt_inds - 1, min=0)], -1)
        return AssignResult(gt_inds, max_overlaps, labels)
