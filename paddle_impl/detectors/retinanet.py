"""RetinaNet-R50-FPN (Paddle twin): backbone, neck, bbox_head (mmdetection names), anchors, box coder, inference."""
import paddle
from paddle import nn

from paddle_impl.backbones.resnet import resnet50
from paddle_impl.coders.box_coder import DeltaXYWHBBoxCoder
from paddle_impl.heads.retina_head import RetinaHead
from paddle_impl.necks.fpn import FPN
from paddle_impl.ops.nms import batched_nms
from paddle_impl.priors.anchors import AnchorGenerator


class RetinaNet(nn.Layer):
    def __init__(self, num_classes=80, extra_from="c5", relu_before_p7=False, frozen_stages=1, norm_eval=True,
                 anchor_cfg=None, box_coder_cfg=None, score_thresh=0.05, nms_thresh=0.5, topk_candidates=1000,
                 detections_per_img=100):
        super().__init__()
        self.backbone = resnet50(num_classes=None, out_indices=(1, 2, 3), frozen_stages=frozen_stages,
                                 norm_eval=norm_eval)
        self.neck = FPN((512, 1024, 2048), 256, extra_from=extra_from, relu_before_p7=relu_before_p7)
        self.anchor_generator = AnchorGenerator(**(anchor_cfg or {}))
        self.bbox_head = RetinaHead(num_classes, num_anchors=self.anchor_generator.num_anchors)
        self.box_coder = DeltaXYWHBBoxCoder(**(box_coder_cfg or {}))
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.topk_candidates = topk_candidates
        self.detections_per_img = detections_per_img

    def forward(self, images):
        """images (N, 3, H, W) -> (per-level cls logits (N, HWA, C), per-level deltas (N, HWA, 4))."""
        return self.bbox_head(self.neck(self.backbone(images)))

    def anchors(self, images, cls_scores):
        """Anchors per level for the feature sizes implied by the image size (ceil of H / stride)."""
        h, w = images.shape[-2:]
        sizes = [(-(-h // s), -(-w // s)) for s in self.anchor_generator.strides]
        anchors = self.anchor_generator(sizes, dtype=images.dtype)
        for a, c in zip(anchors, cls_scores):
            if a.shape[0] != c.shape[1]:
                raise ValueError(f"anchor count {a.shape[0]} does not match head output {c.shape[1]}")
        return anchors

    def forward_with_detections(self, images):
        """Everything inference computes, by name: head outputs and anchors per level, detections per image."""
        cls_scores, bbox_preds = self(images)
        anchors = self.anchors(images, cls_scores)
        size = tuple(images.shape[-2:])
        levels = [f"P{i + 3}" for i in range(len(cls_scores))]
        detections = [self.postprocess_single([c[i] for c in cls_scores], [b[i] for b in bbox_preds], anchors, size)
                      for i in range(images.shape[0])]
        return {"cls_scores": dict(zip(levels, cls_scores)), "bbox_preds": dict(zip(levels, bbox_preds)),
                "anchors": dict(zip(levels, anchors)), "detections": detections}

    @paddle.no_grad()
    def predict(self, images, image_sizes=None):
        """Inference: per image a dict of boxes (K, 4) x1y1x2y2, scores (K,), labels (K,) int64."""
        cls_scores, bbox_preds = self(images)
        anchors = self.anchors(images, cls_scores)
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return [self.postprocess_single([c[i] for c in cls_scores], [b[i] for b in bbox_preds], anchors, size)
                for i, size in enumerate(image_sizes)]

    def postprocess_single(self, cls_scores, bbox_preds, anchors, image_size):
        """torchvision RetinaNet post-processing: per level, score threshold and top-k over
        (anchor, class) pairs, decode and clip; then per-class NMS over all levels and keep the best.
        'anchor_index' is each detection's anchor in the concatenation of all levels' anchors."""
        num_classes = cls_scores[0].shape[-1]
        all_boxes, all_scores, all_labels, all_index = [], [], [], []
        offset = 0
        for logits, deltas, level_anchors in zip(cls_scores, bbox_preds, anchors):
            scores = paddle.nn.functional.sigmoid(logits).flatten()
            keep = paddle.nonzero(scores > self.score_thresh).squeeze(1)
            scores = scores[keep]
            # stable descending sort: ties keep index order, the same in both frameworks
            order = paddle.argsort(scores, descending=True, stable=True)[:self.topk_candidates]
            scores, idx = scores[order], keep[order]
            anchor_idx, labels = idx // num_classes, idx % num_classes
            boxes = self.box_coder.decode(level_anchors[anchor_idx], deltas[anchor_idx], max_shape=image_size)
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_labels.append(labels)
            all_index.append(anchor_idx + offset)
            offset += level_anchors.shape[0]
        boxes, scores, labels = paddle.concat(all_boxes), paddle.concat(all_scores), paddle.concat(all_labels)
        index = paddle.concat(all_index)
        keep = batched_nms(boxes, scores, labels, self.nms_thresh, num_classes)[:self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "anchor_index": index[keep]}
