"""Libra R-CNN (mmdetection 3.3 libra-faster-rcnn_r50_fpn_1x_coco) in Paddle: ResNet-50, neck = Sequential(FPN,
BFP), the RPN and the R-CNN box branch, with mmdetection's module names (twin of torch_ref/detectors/libra_rcnn.py;
../shared/specs/libra_rcnn.md B.2, B.6). The training step is losses/two_stage_criterion.py (targets
in the heads, samplers in twin_common/samplers.py). FasterRCNN: the plain Faster R-CNN R50-FPN it builds on."""
import paddle
from paddle import nn

from paddle_impl.backbones.resnet import resnet50
from paddle_impl.heads.rpn_head import TEST_PROPOSALS, RPNHead
from paddle_impl.necks.bfp import BFP
from paddle_impl.necks.fpn_convmodule import FPN
from paddle_impl.priors.rpn_anchors import RPNAnchorGenerator
from paddle_impl.roi_heads.bbox_head import Shared2FCBBoxHead
from paddle_impl.roi_heads.roi_extractor import SingleRoIExtractor


class StandardRoIHead(nn.Layer):
    """mmdetection's roi_head: the RoI extractor (no parameters) and the box head (keys roi_head.bbox_head.*)."""

    def __init__(self, num_classes=80, loss_bbox="balanced_l1"):
        super().__init__()
        self.bbox_roi_extractor = SingleRoIExtractor()
        self.bbox_head = Shared2FCBBoxHead(num_classes=num_classes, loss_bbox=loss_bbox)

    def forward(self, feats, rois):
        """First 4 neck levels and rois [K, 5] [image, x1, y1, x2, y2] -> (cls_score [K, C+1], bbox_pred [K, 4C])."""
        return self.bbox_head(self.bbox_roi_extractor(feats[:4], rois))


def rois_of(proposals):
    """Per-image proposal boxes -> rois [K, 5] with the image index first (mmdet's bbox2roi)."""
    return paddle.concat([paddle.concat([paddle.full([b.shape[0], 1], i, dtype=b.dtype), b], axis=1)
                          for i, b in enumerate(proposals)])


class LibraRCNN(nn.Layer):
    def __init__(self, num_classes=80, frozen_stages=1, norm_eval=True, score_thr=0.05, nms_iou=0.5,
                 max_per_img=100, proposal_cfg=TEST_PROPOSALS, bfp=True, loss_bbox="balanced_l1"):
        super().__init__()
        self.backbone = resnet50(num_classes=None, out_indices=(0, 1, 2, 3), frozen_stages=frozen_stages,
                                 norm_eval=norm_eval)
        fpn = FPN((256, 512, 1024, 2048), 256, num_outs=5)
        # Libra's neck is [FPN, BFP] (keys neck.0.*, neck.1.*); plain Faster R-CNN's is the FPN (keys neck.*)
        self.neck = nn.Sequential(fpn, BFP(256, num_levels=5, refine_level=2)) if bfp else fpn
        self.anchor_generator = RPNAnchorGenerator()
        self.rpn_head = RPNHead(256, 256, self.anchor_generator.num_anchors)
        self.roi_head = StandardRoIHead(num_classes, loss_bbox)
        self.test_cfg = dict(score_thr=score_thr, nms_iou=nms_iou, max_per_img=max_per_img)
        self.proposal_cfg = dict(proposal_cfg)                         # nms_pre, max_per_img, iou (B.6)
        self.detections_per_img = max_per_img

    def forward(self, images):
        """images [N, 3, H, W], H and W multiples of 32 -> (BFP levels P2-P6, RPN scores, RPN deltas per level)."""
        feats = self.neck(self.backbone(images))
        return feats, *self.rpn_head(feats)

    def anchors(self, feats, dtype):
        return self.anchor_generator([tuple(f.shape[-2:]) for f in feats], dtype=dtype)

    def forward_with_detections(self, images, image_sizes=None, scale_factors=None, proposal_index=None):
        """Everything inference computes, by name: RPN outputs and anchors per level, proposals, R-CNN outputs on
        them and the detections per image (boxes in image_sizes' pixels divided by scale_factors (w, h)).
        proposal_index: per image the anchor indices of the proposals the R-CNN runs on (another run's selection,
        predict_proposals' return_index) instead of this run's own; "proposals" stays this run's selection."""
        feats, rpn_cls, rpn_reg = self(images)
        sizes = image_sizes or [tuple(images.shape[-2:])] * images.shape[0]
        anchors = self.anchors(feats, images.dtype)
        proposals = self.rpn_head.predict_proposals(rpn_cls, rpn_reg, anchors, sizes, return_index=True,
                                                    **self.proposal_cfg)
        used = proposals if proposal_index is None else self.rpn_head.proposals_at(rpn_cls, rpn_reg, anchors, sizes,
                                                                                   proposal_index)
        rois = rois_of([p[0] for p in used])
        cls_score, bbox_pred = self.roi_head(feats, rois)
        scales = scale_factors or [(1.0, 1.0)] * images.shape[0]
        dets = self.roi_head.bbox_head.predict(rois, cls_score, bbox_pred, sizes, scales, return_index=True,
                                               **self.test_cfg)
        levels = [f"P{i + 2}" for i in range(len(feats))]
        detections = [{"boxes": b, "scores": s, "labels": lab, "anchor_index": idx} for b, s, lab, idx in dets]
        return {"rpn_cls": dict(zip(levels, rpn_cls)), "rpn_reg": dict(zip(levels, rpn_reg)),
                "anchors": dict(zip(levels, anchors)),
                "proposals": [{"boxes": b, "scores": s, "labels": lv, "anchor_index": idx}
                              for b, s, lv, idx in proposals],
                "rois": rois, "cls_score": cls_score, "bbox_pred": bbox_pred, "detections": detections}

    @paddle.no_grad()
    def predict(self, images, image_sizes=None):
        """Inference: per image a dict of boxes [K, 4] x1y1x2y2 in image_sizes' pixels, scores [K], labels [K]."""
        dets = self.forward_with_detections(images, image_sizes)["detections"]
        return [{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets]


class FasterRCNN(LibraRCNN):
    """mmdetection's faster-rcnn_r50_fpn_1x_coco, what Libra R-CNN builds on: the same parts without BFP, with L1
    box loss (its samplers are the training criterion's: RandomSampler for the RPN and the R-CNN)."""

    def __init__(self, num_classes=80, **kw):
        super().__init__(num_classes, bfp=False, loss_bbox="l1", **kw)
