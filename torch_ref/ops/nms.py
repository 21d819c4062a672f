"""Class-aware NMS (twin: paddle_impl/ops/nms.py): torchvision's batched_nms."""
from torchvision.ops import batched_nms as _tv_batched_nms


def batched_nms(boxes, scores, labels, iou_threshold):
    """Indices of the kept boxes, by decreasing score; boxes of different labels never suppress each other."""
    return _tv_batched_nms(boxes, scores, labels, iou_threshold)
