"""Class-aware NMS (twin: torch_ref/ops/nms.py): paddle.vision.ops.nms with category_idxs."""
import paddle
from paddle.vision.ops import nms


def batched_nms(boxes, scores, labels, iou_threshold, num_classes):
    """Indices of the kept boxes, by decreasing score; boxes of different labels never suppress each other.

    Paddle 3.3.1's nms fails on zero boxes (torchvision returns an empty index): guarded here."""
    if boxes.shape[0] == 0:
        return paddle.zeros([0], dtype="int64")
    return nms(boxes, iou_threshold, scores=scores, category_idxs=labels, categories=list(range(num_classes)))


def stable_nms(boxes, scores, groups, iou_threshold, num_groups):
    """mmcv's NMS per group (RPN levels, R-CNN classes): kept indices by score descending, ties by index
    ascending; IoU > thr suppresses only within a group.

    Paddle's nms takes the threshold as a float32 attribute, as mmcv's does (the torch twin rounds it alike); the
    decision runs in float64 whatever the dtype, as in the torch twin. Paddle's nms orders equal scores
    arbitrarily (its argsort is not stable): a strictly decreasing surrogate of the stable order replaces the
    scores."""
    if boxes.shape[0] == 0:
        return paddle.zeros([0], dtype="int64")
    order = paddle.argsort(scores, descending=True, stable=True)
    rank = paddle.arange(order.shape[0], 0, -1, dtype="float64")
    keep = batched_nms(paddle.gather(boxes, order).astype("float64"), rank, paddle.gather(groups, order),
                       iou_threshold, num_groups)
    return paddle.gather(order, keep)
