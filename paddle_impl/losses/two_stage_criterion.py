"""Faster/Libra R-CNN's training step: mmdetection 3.3's TwoStageDetector.loss with its train_cfg (twin of
torch_ref/losses/two_stage_criterion.py; ../shared/specs/libra_rcnn.md B.4, B.5, B.9).

- RPN: MaxIoU(0.7, 0.3, 0.3, low quality) on each image's valid anchors (its own size padded to 32), RandomSampler
  (256, 0.5, neg_pos_ub), sigmoid BCE + L1 (rpn_head.loss);
- proposals from the detached RPN outputs (train: nms_pre 2000, max 1000, NMS 0.7 per level), clipped to the image;
- R-CNN, per image: MaxIoU(0.5, 0.5, 0.5) on the proposals, the gts prepended as proposals (add_gt_as_proposals),
  the R-CNN sampler, RoIs = the sorted positives then the sorted negatives, the box head's targets and loss.

The samplers are framework-free (twin_common/samplers.py) and draw from self.rng, a NumPy Generator made from
(seed, step) by set_step (the training loop calls it before each step; built at step 0), so both twins draw the
same sets and a resumed run draws what the uninterrupted one would. Draw order (B.9): every image's RPN sampling,
then every image's R-CNN sampling. The IoU-balanced negative sampler's floor_thr (-1 until its first sampling
call, then 0 for good) is training state: the buffer floor_thr holds it, so it is compared, saved and resumed with
the loss.
"""
import paddle
from paddle import nn

from paddle_impl.assigners.max_iou import MaxIoUAssigner
from paddle_impl.detectors.libra_rcnn import rois_of
from paddle_impl.heads.rpn_head import TRAIN_PROPOSALS
from twin_common.samplers import add_gt_as_proposals, step_rng

RPN_ASSIGN = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, low_quality=True)
RCNN_ASSIGN = dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, low_quality=False)


def pad_shape(img_shape, divisor=32):
    """An image's own size padded to the divisor (mmdet's per-image pad_shape, which sets the valid anchors)."""
    return tuple(-(-int(s) // divisor) * divisor for s in img_shape)


class TwoStageCriterion(nn.Layer):
    def __init__(self, rpn_sampler, rcnn_sampler, seed=0, proposal_cfg=TRAIN_PROPOSALS):
        super().__init__()
        self.rpn_assigner, self.rcnn_assigner = MaxIoUAssigner(**RPN_ASSIGN), MaxIoUAssigner(**RCNN_ASSIGN)
        self.rpn_sampler, self.rcnn_sampler = rpn_sampler, rcnn_sampler
        self.proposal_cfg, self.seed = dict(proposal_cfg), int(seed)
        self._neg = getattr(rcnn_sampler, "neg_sampler", None)
        if hasattr(self._neg, "floor_thr"):
            self.register_buffer("floor_thr", paddle.to_tensor(float(self._neg.floor_thr), dtype="float64"))
        self.set_step(0)

    def set_step(self, step):
        self.rng = step_rng(self.seed, step)

    def forward(self, model, images, gt_boxes, gt_labels, img_shapes):
        """One batch's losses: {"loss" (the sum of the four, back-propagated), "loss_rpn_cls", "loss_rpn_bbox",
        "loss_cls", "loss_bbox", "acc" (logged only), "num_pos_rois", "num_rois"}. gt_boxes [G_i, 4] and
        gt_labels [G_i] per image, in the resized image's pixels; img_shapes: per image (h, w) before padding."""
        feats, rpn_cls, rpn_reg = model(images)
        anchors = model.anchors(feats, images.dtype)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        valid = [model.anchor_generator.valid_flags(sizes, pad_shape(s)) for s in img_shapes]
        head = model.rpn_head
        assigned = head.assign(anchors, valid, gt_boxes, self.rpn_assigner)
        sampled = [self.rpn_sampler.sample(a.gt_inds.numpy(), a.max_overlaps.numpy(), self.rng)
                   for a in assigned]
        targets = head.get_targets(anchors, valid, gt_boxes, [a.gt_inds for a in assigned], *zip(*sampled))
        losses = head.loss(rpn_cls, rpn_reg, anchors, *targets)
        proposals = head.predict_proposals(rpn_cls, rpn_reg, anchors, img_shapes, **self.proposal_cfg)

        if hasattr(self, "floor_thr"):
            self._neg.floor_thr = float(self.floor_thr)
        pos_priors, neg_priors, pos_gts, pos_labels = [], [], [], []
        for (boxes, _, _), gts, labels in zip(proposals, gt_boxes, gt_labels):
            a = self.rcnn_assigner.assign(boxes, gts)
            gt_inds, max_overlaps, _ = add_gt_as_proposals(a.gt_inds.numpy(), a.max_overlaps.numpy(),
                                                           None, labels.numpy())
            pos, neg = self.rcnn_sampler.sample(gt_inds, max_overlaps, self.rng)
            priors = paddle.concat([gts, boxes])
            matched = paddle.to_tensor(gt_inds[pos] - 1)
            pos_priors.append(paddle.gather(priors, paddle.to_tensor(pos)))
            neg_priors.append(paddle.gather(priors, paddle.to_tensor(neg)))
            pos_gts.append(paddle.gather(gts, matched))
            pos_labels.append(paddle.gather(labels, matched))
        if hasattr(self, "floor_thr"):
            self.floor_thr.set_value(paddle.full([], float(self._neg.floor_thr), self.floor_thr.dtype))
        rois = rois_of([paddle.concat([p, n]) for p, n in zip(pos_priors, neg_priors)])
        cls_score, bbox_pred = model.roi_head(feats, rois)
        bbox_head = model.roi_head.bbox_head
        losses.update(bbox_head.loss(cls_score, bbox_pred,
                                     *bbox_head.get_targets(pos_priors, neg_priors, pos_gts, pos_labels)))
        total = losses["loss_rpn_cls"] + losses["loss_rpn_bbox"] + losses["loss_cls"] + losses["loss_bbox"]
        counts = {"num_pos_rois": float(sum(len(p) for p in pos_priors)), "num_rois": float(rois.shape[0])}
        return {"loss": total, **losses, **{k: paddle.full([], v, images.dtype) for k, v in counts.items()}}
