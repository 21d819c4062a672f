"""PP-YOLOE's training loss from head outputs and ground truth, PPYOLOEHead.get_loss
(twin: torch_ref/losses/ppyoloe_criterion.py; ../shared/specs/ppyoloe.md A.8-A.11).

Grid-cell anchors for the levels' sizes, the static ATSS assigner (PaddleDetection: the first
static_assigner_epoch epochs) or the task-aligned one after it, then PPYOLOELoss. Ground truth comes as
per-image lists and is padded to the batch's largest count with pad_gt_mask, as PaddleDetection's PadGT does
(labels int64: int32 labels crash PaddleDetection on Paddle 3.3.1, A.9.6). A batch without any GT gets every
anchor as background (PaddleDetection's assigners crash on it, A.9.6).
"""
import paddle
from paddle import nn

from paddle_impl.assigners.atss import ATSSAssigner
from paddle_impl.assigners.task_aligned import TaskAlignedAssigner
from paddle_impl.priors.grid_cells import generate_anchors_for_grid_cell

from .ppyoloe_loss import PPYOLOELoss


def pad_gt(boxes, labels, dtype):
    """Per-image boxes (n_i, 4) and labels (n_i,) -> gt_labels (B, n, 1) int64, gt_bboxes (B, n, 4), pad_gt_mask
    (B, n, 1), n the largest n_i; padding is zero boxes with label 0, masked out."""
    n = max((len(b) for b in boxes), default=0)
    gt_labels, gt_bboxes, mask = [], [], []
    for b, lab in zip(boxes, labels):                       # per image: the batch holds a handful
        pad = n - len(b)
        gt_bboxes.append(paddle.concat([b.astype(dtype), paddle.zeros([pad, 4], dtype=dtype)]))
        gt_labels.append(paddle.concat([lab.astype("int64"), paddle.zeros([pad], dtype="int64")]))
        mask.append(paddle.concat([paddle.ones([len(b)], dtype=dtype), paddle.zeros([pad], dtype=dtype)]))
    if n == 0:
        return (paddle.zeros([len(boxes), 0, 1], "int64"), paddle.zeros([len(boxes), 0, 4], dtype),
                paddle.zeros([len(boxes), 0, 1], dtype))
    return paddle.stack(gt_labels)[..., None], paddle.stack(gt_bboxes), paddle.stack(mask)[..., None]


class PPYOLOECriterion(nn.Layer):
    def __init__(self, num_classes=80, fpn_strides=(32, 16, 8), grid_cell_scale=5.0, grid_cell_offset=0.5,
                 reg_max=16, static_topk=9, topk=13, alpha=1.0, beta=6.0):
        super().__init__()
        self.num_classes = num_classes
        self.fpn_strides = tuple(fpn_strides)
        self.grid_cell_scale, self.grid_cell_offset = grid_cell_scale, grid_cell_offset
        self.static_assigner = ATSSAssigner(topk=static_topk, num_classes=num_classes)
        self.assigner = TaskAlignedAssigner(topk=topk, alpha=alpha, beta=beta, num_classes=num_classes)
        self.loss = PPYOLOELoss(num_classes, reg_max)
        self.use_static_assigner = True

    def forward(self, cls_logits, reg_logits, boxes, labels):
        """Head outputs per level and per-image GT boxes (pixels, x1y1x2y2) and labels -> the loss dict."""
        dtype = cls_logits[0].dtype
        sizes = [tuple(c.shape[-2:]) for c in cls_logits]
        anchors, points_px, counts, strides = generate_anchors_for_grid_cell(
            sizes, self.fpn_strides, self.grid_cell_scale, self.grid_cell_offset, dtype)
        points = points_px / strides
        pred_scores, pred_distri = self.loss.flatten(cls_logits, reg_logits)
        pred_bboxes = self.loss.decode(points, pred_distri)
        gt_labels, gt_bboxes, mask = pad_gt(boxes, labels, dtype)
        assigned = self.assign(anchors, counts, points_px, strides, pred_scores, pred_bboxes, gt_labels,
                               gt_bboxes, mask)
        return self.loss(pred_scores, pred_distri, pred_bboxes, points, *assigned, strides)

    def assign(self, anchors, counts, points_px, strides, pred_scores, pred_bboxes, gt_labels, gt_bboxes,
               mask):
        """(assigned labels, boxes, scores): the static ATSS assigner or the task-aligned one, on detached
        predictions; the one entry point of the target assignment (align.events records and replays it)."""
        dtype = pred_scores.dtype
        if gt_bboxes.shape[1] == 0:
            b, length = pred_scores.shape[:2]
            return (paddle.full([b, length], self.num_classes, dtype="int64"),
                    paddle.zeros([b, length, 4], dtype=dtype), paddle.zeros_like(pred_scores))
        if self.use_static_assigner:
            return self.static_assigner(anchors, counts, gt_labels, gt_bboxes, mask, self.num_classes,
                                        pred_bboxes.detach() * strides)[:3]
        return self.assigner(pred_scores.detach(), pred_bboxes.detach() * strides, points_px, counts, gt_labels,
                             gt_bboxes, mask, self.num_classes)[:3]
