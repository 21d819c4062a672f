"""PaddleDetection 2.6's multiclass_nms (twin: torch_ref/ops/multiclass_nms.py): Paddle's own multiclass_nms3
kernel, called as ppdet.modeling.ops.multiclass_nms calls it (return_index=True), for PP-YOLOE's post-processing."""
import paddle


def multiclass_nms(boxes, scores, score_threshold=0.01, nms_top_k=1000, keep_top_k=300, nms_threshold=0.7):
    """Per image and class: scores > score_threshold, top nms_top_k, greedy NMS (IoU > nms_threshold suppresses);
    then the best keep_top_k of the image over all classes. -1 disables either top-k.

    boxes [B, L, 4] x1y1x2y2 and scores [B, C, L] (probabilities), float32 or float64.
    Returns (detections [K, 6] rows [label, score, x1, y1, x2, y2] in the boxes' dtype, images in batch order and
    each grouped by class ascending, then by decreasing score; bbox_num [B] int32; index [K] int64, each row's
    anchor within its own image)."""
    out, index, bbox_num = paddle._C_ops.multiclass_nms3(
        boxes, scores, None, score_threshold, nms_top_k, keep_top_k, nms_threshold, True, 1.0, -1)
    # the kernel's index is int32 [K, 1] and flat over the batch (b * L + anchor): made per image, int64
    num_anchors = boxes.shape[1]
    offset = paddle.repeat_interleave(paddle.arange(boxes.shape[0], dtype="int64") * num_anchors,
                                      bbox_num.astype("int64"))
    return out, bbox_num, index.reshape([-1]).astype("int64") - offset
