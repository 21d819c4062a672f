"""mmdetection's Shared2FCBBoxHead as Libra R-CNN configures it (Paddle twin: torch_ref/roi_heads/bbox_head.py):
two shared fc + ReLU, softmax classifier with background last, class-specific deltas (stds 0.1, 0.1, 0.2, 0.2),
softmax CE + Balanced L1 (../shared/specs/libra_rcnn.md B.3, B.5.6-B.5.9, B.6)."""
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_impl.coders.box_coder import DeltaXYWHBBoxCoder
from paddle_impl.losses.balanced_l1 import balanced_l1_loss
from paddle_impl.ops.nms import stable_nms as class_nms

# mmdet's avg_factor eps (losses/utils.py): float32 epsilon, also for float64 inputs
AVG_EPS = float(np.finfo(np.float32).eps)


class Shared2FCBBoxHead(nn.Layer):
    def __init__(self, in_channels=256, roi_feat_size=7, fc_out_channels=1024, num_classes=80,
                 target_stds=(0.1, 0.1, 0.2, 0.2), alpha=0.5, gamma=1.5, beta=1.0, loss_bbox="balanced_l1"):
        super().__init__()
        self.num_classes = num_classes
        self.bbox_coder = DeltaXYWHBBoxCoder(stds=target_stds)
        self.alpha, self.gamma, self.beta = alpha, gamma, beta   # Balanced L1 (B.1 item 2)
        if loss_bbox not in ("balanced_l1", "l1"):                 # l1: plain Faster R-CNN's L1Loss
            raise ValueError(f"loss_bbox must be 'balanced_l1' or 'l1', got {loss_bbox!r}")
        self.loss_bbox = loss_bbox
        # registration order as mmdet's (BBoxHead makes fc_cls, fc_reg before ConvFCBBoxHead's shared_fcs);
        # Paddle's Linear weight is [in, out]: weights_convert transposes it
        self.fc_cls = nn.Linear(fc_out_channels, num_classes + 1)     # background is the last class
        self.fc_reg = nn.Linear(fc_out_channels, 4 * num_classes)     # [cls][dx, dy, dw, dh]
        self.shared_fcs = nn.LayerList([nn.Linear(in_channels * roi_feat_size ** 2, fc_out_channels),
                                        nn.Linear(fc_out_channels, fc_out_channels)])
        self.init_weights()

    def init_weights(self):
        """B.3: fc_cls N(0, 0.01), fc_reg N(0, 0.001), shared fcs Xavier uniform (gain 1), every bias 0."""
        nn.initializer.Normal(0.0, 0.01)(self.fc_cls.weight)
        nn.initializer.Normal(0.0, 0.001)(self.fc_reg.weight)
        for fc in self.shared_fcs:
            nn.initializer.XavierUniform()(fc.weight)   # symmetric in fan-in and fan-out: [in, out] is fine
        for m in (self.fc_cls, self.fc_reg, *self.shared_fcs):
            nn.initializer.Constant(0.0)(m.bias)

    def forward(self, roi_feats):
        """roi_feats [K, C, H, W] -> (cls_score [K, num_classes + 1], bbox_pred [K, 4 * num_classes])."""
        x = roi_feats.flatten(1)                                      # C, H, W order, as mmdet's view
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def get_targets(self, pos_priors, neg_priors, pos_gt_boxes, pos_gt_labels):
        """Per-image lists (mmdet's sampling results): pos_priors [P_i, 4], neg_priors [N_i, 4] (only counted),
        pos_gt_boxes [P_i, 4], pos_gt_labels [P_i] int64. The RoIs are each image's positives then negatives,
        images in order. Returns, concatenated: labels [R] int64 (num_classes for negatives), label_weights [R],
        bbox_targets [R, 4] (0 for negatives), bbox_weights [R, 4] (1 for positives, 0 for negatives).

        As in mmdet, a zero-area positive prior (a degenerate GT added as proposal) gives non-finite targets
        (0/0); loss() then raises, naming the target."""
        labels, label_weights, targets, weights = [], [], [], []
        for pos, neg, gt, gt_labels in zip(pos_priors, neg_priors, pos_gt_boxes, pos_gt_labels):  # per image
            num_pos, num_neg, dtype = pos.shape[0], neg.shape[0], pos.dtype
            labels += [gt_labels.astype("int64"), paddle.full([num_neg], self.num_classes, dtype="int64")]
            label_weights.append(paddle.ones([num_pos + num_neg], dtype=dtype))
            targets += [self.bbox_coder.encode(pos, gt), paddle.zeros([num_neg, 4], dtype=dtype)]
            weights += [paddle.ones([num_pos, 4], dtype=dtype), paddle.zeros([num_neg, 4], dtype=dtype)]
        return paddle.concat(labels), paddle.concat(label_weights), paddle.concat(targets), paddle.concat(weights)

    def loss(self, cls_score, bbox_pred, labels, label_weights, bbox_targets, bbox_weights):
        """B.5.7. Returns {"loss_cls", "loss_bbox", "acc"} (acc in percent over the sampled RoIs, not a loss)."""
        num_rois = cls_score.shape[0]
        # mmdet: avg_factor = max(#(label_weights > 0), 1), a host float
        avg_factor = max(float((label_weights > 0).astype("int64").sum()), 1.0)
        # Paddle 3.3.1's F.cross_entropy and F.log_softmax clamp log p at -64 (p >= exp(-64)), in float64 too;
        # torch and mmdet do not (align/known_differences.py cross_entropy_clamp_64, canary in
        # tests/test_explain.py): minus the label's x - logsumexp(x) instead
        logp = cls_score - paddle.logsumexp(cls_score, axis=-1, keepdim=True)
        ce = -paddle.take_along_axis(logp, labels.reshape([-1, 1]), axis=1).reshape([-1])
        loss_cls = (ce * label_weights).sum() / (avg_factor + AVG_EPS)
        acc = (cls_score.argmax(1) == labels).astype(cls_score.dtype).sum() * (100.0 / max(num_rois, 1))
        # the gt class's 4 deltas of each positive; none: an empty sum, 0 with a zero gradient (mmdet's
        # bbox_pred[pos_inds].sum()). Rows of [R * num_classes, 4] indexed by RoI * num_classes + label.
        pos = paddle.nonzero((labels >= 0) & (labels < self.num_classes)).reshape([-1])
        rows = pos * self.num_classes + paddle.gather(labels, pos)
        pos_pred = paddle.gather(bbox_pred.reshape([num_rois * self.num_classes, 4]), rows)
        pos_targets, pos_weights = paddle.gather(bbox_targets, pos), paddle.gather(bbox_weights, pos)
        if self.loss_bbox == "l1":
            loss = ((pos_pred - pos_targets).abs() * pos_weights).sum()
        else:
            loss = balanced_l1_loss(pos_pred, pos_targets, self.alpha, self.gamma, self.beta, weight=pos_weights,
                                    reduction="sum")
        # avg_factor = bbox_targets.size(0): every sampled RoI of the batch, not only positives
        return {"loss_cls": loss_cls, "loss_bbox": loss / (bbox_targets.shape[0] + AVG_EPS), "acc": acc}

    @paddle.no_grad()
    def predict(self, rois, cls_score, bbox_pred, img_shapes, scale_factors, score_thr=0.05, nms_iou=0.5,
                max_per_img=100, return_index=False):
        """B.6. rois [R, 5] (image index, x1, y1, x2, y2) grouped by image in image order; img_shapes [(h, w)];
        scale_factors [(w_scale, h_scale)] of the resize. Per image (boxes [N, 4] in original-image pixels,
        scores [N], labels [N] int64), score descending, ties by (RoI, class) ascending; return_index: and each
        detection's RoI index within its image (what identifies it across frameworks)."""
        counts = paddle.bincount(rois[:, 0].astype("int64"), minlength=len(img_shapes)).tolist()
        probs = F.softmax(cls_score, axis=-1)
        results, start = [], 0
        for i, n in enumerate(counts):                                # per image
            r, p, d = rois[start:start + n], probs[start:start + n], bbox_pred[start:start + n]
            start += n
            # every class's box, clipped to the resized image, then to original pixels (mmdet multiplies by 1/s)
            boxes = self.bbox_coder.decode(r[:, None, 1:].expand([n, self.num_classes, 4]),
                                           d.reshape([n, self.num_classes, 4]), max_shape=img_shapes[i])
            sw, sh = scale_factors[i]
            boxes = (boxes * paddle.to_tensor([1 / sw, 1 / sh, 1 / sw, 1 / sh], dtype=boxes.dtype)).reshape([-1, 4])
            # candidates RoI-major, class-minor (mmdet's flattening), background dropped, score > thr strictly
            scores = p[:, :-1].reshape([-1])
            labels = paddle.tile(paddle.arange(self.num_classes, dtype="int64"), [n])
            cand = paddle.nonzero(scores > score_thr).reshape([-1])
            kept = class_nms(paddle.gather(boxes, cand), paddle.gather(scores, cand), paddle.gather(labels, cand),
                             nms_iou, self.num_classes)
            keep = paddle.gather(cand, kept)[:max_per_img]
            results.append((paddle.gather(boxes, keep), paddle.gather(scores, keep), paddle.gather(labels, keep))
                           + ((keep // self.num_classes,) if return_index else ()))
        return results
