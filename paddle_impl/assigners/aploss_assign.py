"""AP-Loss anchor assignment and box encoding (cccorn/AP-loss semantics, legacy +1 box widths).

Per image: IoU in float64; positive if IoU_max >= 0.5 or the anchor attains some GT's column max (ties
included; as in the official code this also holds for a GT that overlaps no anchor, whose column max is 0);
negative if IoU_max < 0.4 (positives win); the rest ignored (-1). The assigned GT is the first maximal
column, chosen explicitly so the result does not depend on a framework's argmax tie-breaking. An image
without GT (all labels -1) is all negatives with no regression target.
"""
import paddle

from paddle_impl.ops.iou import legacy_iou

BOX_STDS = (0.1, 0.1, 0.2, 0.2)


def legacy_encode(anchors, boxes):
    """Legacy (+1) deltas / BOX_STDS; GT widths are clipped to >= 1 after the centres, as officially."""
    aw = anchors[:, 2] - anchors[:, 0] + 1.0
    ah = anchors[:, 3] - anchors[:, 1] + 1.0
    ax = anchors[:, 0] + 0.5 * (aw - 1.0)
    ay = anchors[:, 1] + 0.5 * (ah - 1.0)
    gw = boxes[:, 2] - boxes[:, 0] + 1.0
    gh = boxes[:, 3] - boxes[:, 1] + 1.0
    gx = boxes[:, 0] + 0.5 * (gw - 1.0)
    gy = boxes[:, 1] + 0.5 * (gh - 1.0)
    gw, gh = gw.clip(min=1), gh.clip(min=1)
    deltas = paddle.stack([(gx - ax) / aw, (gy - ay) / ah, paddle.log(gw / aw), paddle.log(gh / ah)], axis=1)
    return deltas / paddle.to_tensor(BOX_STDS, dtype=deltas.dtype)


def _assign_image(anchors64, ann, num_classes, reg_dtype):
    ann64 = ann.astype(paddle.float64)
    valid = ann64[:, 4] != -1
    num_gt = ann64.shape[0]
    iou = legacy_iou(anchors64, ann64[:, :4])
    iou = paddle.where(valid[None, :], iou, paddle.full_like(iou, -1.0))   # padding never matches
    # '>=' against a max is exact equality; Paddle's float '==' means |a - b| < 1e-8
    iou_max = paddle.amax(iou, axis=1)
    cols = paddle.arange(num_gt, dtype=paddle.int64)
    first = paddle.amin(paddle.where(iou >= iou_max[:, None], cols[None, :], paddle.full_like(cols, num_gt)[None, :]),
                        axis=1)
    attains = paddle.any((iou >= paddle.amax(iou, axis=0)[None, :]) & valid[None, :], axis=1)
    positive = attains | (iou_max >= 0.5)
    negative = iou_max < 0.4
    assigned = paddle.gather(ann, first)
    labels = assigned[:, 4].astype(paddle.int64)
    base = paddle.where(positive | negative, paddle.zeros_like(labels), paddle.full_like(labels, -1))
    base = base.astype(paddle.int32)
    onehot = (labels[:, None] == paddle.arange(num_classes, dtype=paddle.int64)[None, :]) & positive[:, None]
    targets = paddle.where(onehot, paddle.ones_like(base)[:, None], base[:, None])
    encoded = legacy_encode(anchors64.astype(reg_dtype), assigned[:, :4].astype(reg_dtype))
    reg_targets = paddle.where(positive[:, None], encoded, paddle.zeros_like(encoded))
    return targets, positive, reg_targets


@paddle.no_grad()
def assign_targets(anchors, annotations, num_classes, reg_dtype):
    """anchors (A, 4), annotations (B, M, 5) [x1, y1, x2, y2, label], label -1 = padding ->
    targets (B, A, num_classes) int32 in {-1, 0, 1}, positive (B, A) bool, reg_targets (B, A, 4) reg_dtype
    (zero off the positives). A Python loop over images keeps the IoU matrix at (A, M) per image."""
    if annotations.shape[1] == 0:   # no GT slots at all: one padding row gives the same result
        annotations = paddle.full([annotations.shape[0], 1, 5], -1.0, dtype=annotations.dtype)
    anchors64 = anchors.astype(paddle.float64)
    per_image = [_assign_image(anchors64, annotations[j], num_classes, reg_dtype)
                 for j in range(annotations.shape[0])]
    return tuple(paddle.stack(list(parts)) for parts in zip(*per_image))
