"""PP-YOLOE (s/m/l/x by depth and width multipliers): CSPResNet + CustomCSPPAN + PPYOLOEHead, as PaddleDetection's
YOLOv3 architecture names them (backbone, neck, yolo_head), with its post-processing (twin:
torch_ref/detectors/ppyoloe.py). Inputs must be multiples of 32 (the x2 upsample must meet the skip)."""
import paddle
from paddle import nn

from paddle_impl.backbones.cspresnet import CSPResNet
from paddle_impl.heads.ppyoloe_head import PPYOLOEHead
from paddle_impl.necks.custom_pan import CustomCSPPAN
from paddle_impl.ops.multiclass_nms import multiclass_nms


class PPYOLOE(nn.Layer):
    def __init__(self, num_classes=80, depth_mult=1.0, width_mult=1.0, score_threshold=0.01, nms_top_k=1000,
                 keep_top_k=300, nms_threshold=0.7):
        super().__init__()
        self.backbone = CSPResNet(width_mult=width_mult, depth_mult=depth_mult)
        self.neck = CustomCSPPAN(self.backbone.out_channels, width_mult=width_mult, depth_mult=depth_mult)
        self.yolo_head = PPYOLOEHead(self.neck.out_channels, num_classes)
        self.nms_cfg = dict(score_threshold=score_threshold, nms_top_k=nms_top_k, keep_top_k=keep_top_k,
                            nms_threshold=nms_threshold)
        self.detections_per_img = keep_top_k

    def forward(self, images):
        """images (N, 3, H, W), H and W multiples of 32 -> (class logits, bin logits) per level (32, 16, 8)."""
        h, w = images.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"PP-YOLOE needs H and W divisible by 32, got {h}x{w}")
        return self.yolo_head(self.neck(self.backbone(images)))

    def forward_with_detections(self, images, scale_factor=None):
        """Everything inference computes, by name: scores (N, C, L), distances and boxes (N, L, 4), anchor points
        and strides, and the detections per image (rows grouped by class, as PaddleDetection returns them)."""
        cls_logits, reg_logits = self(images)
        points, strides = self.yolo_head.anchor_points(cls_logits)
        scores, distances = self.yolo_head.decode_eval(cls_logits, reg_logits)
        if scale_factor is None:
            scale_factor = paddle.ones([images.shape[0], 2], dtype=images.dtype)
        boxes = self.yolo_head.decode_boxes(points, distances, strides, scale_factor)
        rows, bbox_num, index = multiclass_nms(boxes, scores, **self.nms_cfg)
        detections = []
        counts = [int(n) for n in bbox_num.numpy()]
        start = 0
        for n in counts:
            det, idx = rows[start:start + n], index[start:start + n]
            detections.append({"boxes": det[:, 2:], "scores": det[:, 1], "labels": det[:, 0].astype("int64"),
                               "anchor_index": idx})
            start += n
        return {"scores": scores, "distances": distances, "boxes": boxes, "anchor_points": points,
                "stride_tensor": strides, "detections": detections}

    @paddle.no_grad()
    def predict(self, images, image_sizes=None):
        """Inference: per image a dict of boxes (K, 4) x1y1x2y2 in image_sizes' pixels, scores (K,), labels (K,)."""
        h, w = images.shape[-2:]
        sizes = image_sizes or [(h, w)] * images.shape[0]
        scale = paddle.to_tensor([[h / sh, w / sw] for sh, sw in sizes], dtype=images.dtype)
        dets = self.forward_with_detections(images, scale)["detections"]
        return [{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets]

    def convert_to_deploy(self):
        """Fold every RepVggBlock (PaddleDetection's RepVGG deploy form); returns the model."""
        for m in list(self.sublayers()):
            if hasattr(m, "convert_to_deploy"):
                m.convert_to_deploy()
        return self
