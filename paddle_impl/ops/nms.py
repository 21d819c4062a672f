"""Class-aware NMS (twin: torch_ref/ops/nms.py): paddle.vision.ops.nms with category_idxs."""
import paddle
from paddle.vision.ops import nms


def batched_nms(boxes, scores, labels, iou_threshold, num_classes):
    """Indices of the kept boxes, by decreasing score; boxes of different labels never suppress each other.

    Paddle 3.3.1's nms fails on zero boxes (torchvision returns an empty index): guarded here."""
    if boxes.shape[0] == 0:
        return paddle.zeros([0], dtype="int64")
    return nms(boxes, iou_threshold, scores=scores, category_idxs=labels, categories=list(range(num_classes)))
