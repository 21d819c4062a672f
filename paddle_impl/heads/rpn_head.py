"""mmdetection 3.3's RPNHead as Faster/Libra R-CNN configures it (Paddle twin of torch_ref/heads/rpn_head.py; float64
NumPy reference: align/numpy_ref/rpn.py; ../shared/specs/libra_rcnn.md B.3, B.4, B.9-B.11).

One 3x3 conv + ReLU shared by the 5 levels, then 1x1 convs to A sigmoid logits and 4A deltas (DeltaXYWH, stds 1).
Outputs keep mmdet's layout, cls [N, A, H, W] and reg [N, 4A, H, W] (channel a*4 + k); flattened as
transpose([0, 2, 3, 1]) they follow the anchors' order (location-major, anchors fastest). mmdet's RPN labels:
0 object, 1 background. Anchors come from paddle_impl/priors/rpn_anchors.py, assignment from
MaxIoUAssigner(0.7, 0.3, 0.3), sampling from twin_common/samplers.RandomSampler(256, 0.5, neg_pos_ub=5).
"""
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_impl.coders.box_coder import DeltaXYWHBBoxCoder
from paddle_impl.ops.nms import stable_nms as level_nms

AVG_EPS = float(np.finfo(np.float32).eps)    # mmdet's avg_factor eps (losses/utils.py), also for float64
TRAIN_PROPOSALS = {"nms_pre": 2000, "max_per_img": 1000, "iou": 0.7}
TEST_PROPOSALS = {"nms_pre": 1000, "max_per_img": 1000, "iou": 0.7}


def avg_factor(num_pos, num_neg):
    """One image's share of the normaliser (mmdet SamplingResult.avg_factor): max(#pos, 1) + max(#neg, 1)."""
    return max(num_pos, 1) + max(num_neg, 1)


def _check_sampled(pos_ok, neg_ok):
    # indices sampled from another assignment (e.g. float64 vs float32 IoU ties) would give wrong targets silently
    if not (pos_ok and neg_ok):
        raise ValueError("pos_inds must index anchors with gt_inds > 0 and neg_inds anchors with gt_inds == 0")


def _flat_cls(x):
    return x.transpose([0, 2, 3, 1]).reshape([x.shape[0], -1])        # [N, H*W*A]


def _flat_reg(x):
    return x.transpose([0, 2, 3, 1]).reshape([x.shape[0], -1, 4])     # [N, H*W*A, 4]


class RPNHead(nn.Layer):
    def __init__(self, in_channels=256, feat_channels=256, num_anchors=3):
        super().__init__()
        self.num_anchors = num_anchors
        self.rpn_conv = nn.Conv2D(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2D(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2D(feat_channels, num_anchors * 4, 1)
        self.bbox_coder = DeltaXYWHBBoxCoder()                       # means 0, stds 1
        self.init_weights()

    def init_weights(self):
        """B.3: Normal(0, 0.01) on all three convs, bias 0."""
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.initializer.Normal(0.0, 0.01)(m.weight)
            nn.initializer.Constant(0.0)(m.bias)

    def forward(self, feats):
        """feats: [N, C, H_l, W_l] per level -> (cls [N, A, H_l, W_l] per level, reg [N, 4A, H_l, W_l] per level)."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            cls_scores.append(self.rpn_cls(x))
            bbox_preds.append(self.rpn_reg(x))
        return cls_scores, bbox_preds

    @staticmethod
    def assign(anchors, valid_flags, gt_boxes, assigner):
        """Per image, the assigner's result on the valid anchors (allowed_border -1: inside = valid).
        anchors: [L_l, 4] per level; valid_flags: per image, [L_l] bool per level; gt_boxes: per image [G, 4]."""
        flat = paddle.concat(anchors)
        return [assigner.assign(flat[paddle.concat(v)], g) for v, g in zip(valid_flags, gt_boxes)]

    def get_targets(self, anchors, valid_flags, gt_boxes, gt_inds, pos_inds, neg_inds):
        """B.4 targets from the assignment and the sampled indices, however they were sampled.

        anchors: [L_l, 4] per level (the batch shares them). Per image: valid_flags, [L_l] bool per level; gt_boxes
        [G, 4]; gt_inds [V] int64 tensor on the V valid anchors (0 negative, -1 ignored, k > 0 gt k - 1);
        pos_inds, neg_inds: int64 indices into the valid anchors (NumPy arrays or tensors), checked against gt_inds.
        Returns (labels, label_weights, bbox_targets, bbox_weights, avg_factor): per level [N, L_l] int64 (0 object,
        1 background), [N, L_l], [N, L_l, 4], [N, L_l, 4] in the anchors' dtype; avg_factor a Python int."""
        flat = paddle.concat(anchors)
        num, dtype = flat.shape[0], flat.dtype
        out, total = [], 0
        for valid, gt, inds, pos, neg in zip(valid_flags, gt_boxes, gt_inds, pos_inds, neg_inds):  # per image
            to_all = paddle.nonzero(paddle.concat(valid)).squeeze(1)        # valid anchor -> anchor index
            pos = paddle.to_tensor(pos, dtype="int64")
            neg = paddle.to_tensor(neg, dtype="int64")
            _check_sampled(pos.shape[0] == 0 or bool((paddle.gather(inds, pos) > 0).all()),
                           neg.shape[0] == 0 or bool((paddle.gather(inds, neg) == 0).all()))
            labels = paddle.ones([num], dtype="int64")                      # 1: background (mmdet num_classes)
            label_w = paddle.zeros([num], dtype=dtype)
            targets, bbox_w = paddle.zeros([num, 4], dtype=dtype), paddle.zeros([num, 4], dtype=dtype)
            # Paddle's index assignment fails on an empty index: the branches mmdet has anyway
            if pos.shape[0]:
                p = paddle.gather(to_all, pos)
                labels[p] = 0
                label_w[p] = 1.0
                gt_pos = paddle.gather(gt, paddle.gather(inds, pos) - 1)
                targets[p] = self.bbox_coder.encode(paddle.gather(flat, p), gt_pos)
                bbox_w[p] = 1.0
            if neg.shape[0]:
                label_w[paddle.gather(to_all, neg)] = 1.0
            out.append((labels, label_w, targets, bbox_w))
            total += avg_factor(pos.shape[0], neg.shape[0])
        sizes = [a.shape[0] for a in anchors]
        return (*[list(paddle.stack(t).split(sizes, axis=1)) for t in zip(*out)], total)

    def loss(self, cls_scores, bbox_preds, anchors, labels, label_weights, bbox_targets, bbox_weights, avg_factor):
        """B.4 losses; per-level inputs as get_targets returns them. anchors is unused (mmdet passes it for
        reg_decoded_bbox, False here). Each level's sum is divided by avg_factor + eps, then the levels are
        summed in order (mmdet's multi_apply + mmengine's parser). Returns {"loss_rpn_cls", "loss_rpn_bbox"}."""
        denom = avg_factor + AVG_EPS
        loss_cls, loss_bbox = 0, 0
        for cls, reg, lab, lw, tgt, bw in zip(cls_scores, bbox_preds, labels, label_weights, bbox_targets,
                                              bbox_weights):
            x = _flat_cls(cls).reshape([-1])
            bce = F.binary_cross_entropy_with_logits(x, (lab.reshape([-1]) == 0).astype(x.dtype), reduction="none")
            loss_cls = loss_cls + (bce * lw.reshape([-1])).sum() / denom
            l1 = (_flat_reg(reg).reshape([-1, 4]) - tgt.reshape([-1, 4])).abs()
            loss_bbox = loss_bbox + (l1 * bw.reshape([-1, 4])).sum() / denom
        return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}

    @paddle.no_grad()
    def predict_proposals(self, cls_scores, bbox_preds, anchors, img_shapes, nms_pre=1000, max_per_img=1000,
                          iou=0.7, return_index=False):
        """B.4 proposals from detached outputs (train: nms_pre 2000, test 1000; max_per_img 1000).
        img_shapes: per image (h, w) to clip to. Returns per image (boxes [K, 4], scores [K], level_ids [K] int64),
        score descending, ties by candidate index (level, then rank within the level); return_index: and each
        proposal's anchor index [K] into the image's anchors of all levels (what identifies it across runs)."""
        results = []
        for i, shape in enumerate(img_shapes):
            scores, deltas, priors, levels, index, start = [], [], [], [], [], 0
            for lvl, (cls, reg, anc) in enumerate(zip(cls_scores, bbox_preds, anchors)):
                s = F.sigmoid(_flat_cls(cls[i:i + 1].detach())[0])
                d = _flat_reg(reg[i:i + 1].detach())[0]
                idx = paddle.arange(s.shape[0], dtype="int64")
                if 0 < nms_pre < s.shape[0]:
                    idx = paddle.argsort(s, descending=True, stable=True)[:nms_pre]
                    s, d, anc = paddle.gather(s, idx), paddle.gather(d, idx), paddle.gather(anc, idx)
                scores.append(s)
                deltas.append(d)
                priors.append(anc)
                levels.append(paddle.full([s.shape[0]], lvl, dtype="int64"))
                index.append(idx + start)
                start += cls.shape[1] * cls.shape[2] * cls.shape[3]
            boxes = self.bbox_coder.decode(paddle.concat(priors), paddle.concat(deltas), max_shape=shape)
            scores, levels, index = paddle.concat(scores), paddle.concat(levels), paddle.concat(index)
            ok = paddle.nonzero((boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)).squeeze(1)
            boxes, scores = paddle.gather(boxes, ok), paddle.gather(scores, ok)
            levels, index = paddle.gather(levels, ok), paddle.gather(index, ok)
            keep = level_nms(boxes, scores, levels, iou, len(anchors))[:max_per_img]
            results.append((paddle.gather(boxes, keep), paddle.gather(scores, keep), paddle.gather(levels, keep))
                           + ((paddle.gather(index, keep),) if return_index else ()))
        return results

    def proposals_at(self, cls_scores, bbox_preds, anchors, img_shapes, index):
        """The proposals of given anchors, without selection: index per image [K] into the image's anchors of all
        levels (predict_proposals' return_index). Returns per image (boxes [K, 4], scores [K], level_ids [K]), as
        predict_proposals computes them for those anchors (a float32 run on the float64 run's selection)."""
        sizes = [c.shape[1] * c.shape[2] * c.shape[3] for c in cls_scores]
        all_levels = paddle.concat([paddle.full([n], lvl, dtype="int64") for lvl, n in enumerate(sizes)])
        priors = paddle.concat(list(anchors))
        results = []
        for i, (shape, idx) in enumerate(zip(img_shapes, index)):
            s = paddle.gather(F.sigmoid(paddle.concat([_flat_cls(c[i:i + 1].detach())[0] for c in cls_scores])), idx)
            d = paddle.gather(paddle.concat([_flat_reg(r[i:i + 1].detach())[0] for r in bbox_preds]), idx)
            results.append((self.bbox_coder.decode(paddle.gather(priors, idx), d, max_shape=shape), s,
                            paddle.gather(all_levels, idx)))
        return results
