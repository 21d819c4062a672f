"""mmdetection 3.3's RPNHead as Faster/Libra R-CNN configures it (twin: paddle_impl/heads/rpn_head.py; float64
NumPy reference: align/numpy_ref/rpn.py; ../shared/specs/libra_rcnn.md B.3, B.4, B.9-B.11).

One 3x3 conv + ReLU shared by the 5 levels, then 1x1 convs to A sigmoid logits and 4A deltas (DeltaXYWH, stds 1).
Outputs keep mmdet's layout, cls [N, A, H, W] and reg [N, 4A, H, W] (channel a*4 + k); flattened as
permute(0, 2, 3, 1) they follow the anchors' order (location-major, anchors fastest). mmdet's RPN labels: 0 object,
1 background. Anchors come from torch_ref/priors/rpn_anchors.py, assignment from MaxIoUAssigner(0.7, 0.3, 0.3),
sampling from twin_common/samplers.RandomSampler(256, 0.5, neg_pos_ub=5).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.coders.box_coder import DeltaXYWHBBoxCoder
from torch_ref.ops.nms import stable_nms as level_nms

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
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)          # [N, H*W*A]


def _flat_reg(x):
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4)       # [N, H*W*A, 4]


class RPNHead(nn.Module):
    def __init__(self, in_channels=256, feat_channels=256, num_anchors=3):
        super().__init__()
        self.num_anchors = num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        self.bbox_coder = DeltaXYWHBBoxCoder()                       # means 0, stds 1
        self.init_weights()

    def init_weights(self):
        """B.3: Normal(0, 0.01) on all three convs, bias 0."""
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)

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
        flat = torch.cat(anchors)
        return [assigner.assign(flat[torch.cat(v)], g) for v, g in zip(valid_flags, gt_boxes)]

    def get_targets(self, anchors, valid_flags, gt_boxes, gt_inds, pos_inds, neg_inds):
        """B.4 targets from the assignment and the sampled indices, however they were sampled.

        anchors: [L_l, 4] per level (the batch shares them). Per image: valid_flags, [L_l] bool per level; gt_boxes
        [G, 4]; gt_inds [V] int64 tensor on the V valid anchors (0 negative, -1 ignored, k > 0 gt k - 1);
        pos_inds, neg_inds: int64 indices into the valid anchors (NumPy arrays or tensors), checked against gt_inds.
        Returns (labels, label_weights, bbox_targets, bbox_weights, avg_factor): per level [N, L_l] int64 (0 object,
        1 background), [N, L_l], [N, L_l, 4], [N, L_l, 4] in the anchors' dtype; avg_factor a Python int."""
        flat = torch.cat(anchors)
        num, dev = len(flat), flat.device
        out, total = [], 0
        for valid, gt, inds, pos, neg in zip(valid_flags, gt_boxes, gt_inds, pos_inds, neg_inds):  # per image
            to_all = torch.cat(valid).nonzero().squeeze(1)                 # valid anchor -> anchor index
            pos = torch.as_tensor(pos, dtype=torch.int64, device=dev)
            neg = torch.as_tensor(neg, dtype=torch.int64, device=dev)
            _check_sampled(bool((inds[pos] > 0).all()), bool((inds[neg] == 0).all()))
            labels = torch.ones(num, dtype=torch.int64, device=dev)         # 1: background (mmdet num_classes)
            label_w, targets, bbox_w = flat.new_zeros(num), flat.new_zeros(num, 4), flat.new_zeros(num, 4)
            if len(pos):
                p = to_all[pos]
                labels[p] = 0
                label_w[p] = 1
                targets[p] = self.bbox_coder.encode(flat[p], gt[inds[pos] - 1])
                bbox_w[p] = 1
            if len(neg):
                label_w[to_all[neg]] = 1
            out.append((labels, label_w, targets, bbox_w))
            total += avg_factor(len(pos), len(neg))
        sizes = [len(a) for a in anchors]
        return (*[list(torch.stack(t).split(sizes, dim=1)) for t in zip(*out)], total)

    def loss(self, cls_scores, bbox_preds, anchors, labels, label_weights, bbox_targets, bbox_weights, avg_factor):
        """B.4 losses; per-level inputs as get_targets returns them. anchors is unused (mmdet passes it for
        reg_decoded_bbox, False here). Each level's sum is divided by avg_factor + eps, then the levels are
        summed in order (mmdet's multi_apply + mmengine's parser). Returns {"loss_rpn_cls", "loss_rpn_bbox"}."""
        denom = avg_factor + AVG_EPS
        loss_cls, loss_bbox = 0, 0
        for cls, reg, lab, lw, tgt, bw in zip(cls_scores, bbox_preds, labels, label_weights, bbox_targets,
                                              bbox_weights):
            x = _flat_cls(cls).reshape(-1)
            bce = F.binary_cross_entropy_with_logits(x, (lab.reshape(-1) == 0).to(x.dtype), reduction="none")
            loss_cls = loss_cls + (bce * lw.reshape(-1)).sum() / denom
            l1 = (_flat_reg(reg).reshape(-1, 4) - tgt.reshape(-1, 4)).abs()
            loss_bbox = loss_bbox + (l1 * bw.reshape(-1, 4)).sum() / denom
        return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}

    @torch.no_grad()
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
                s = _flat_cls(cls[i:i + 1].detach())[0].sigmoid()
                d = _flat_reg(reg[i:i + 1].detach())[0]
                idx = torch.arange(len(s), device=s.device)
                if 0 < nms_pre < len(s):
                    s, idx = torch.sort(s, descending=True, stable=True)
                    s, idx = s[:nms_pre], idx[:nms_pre]
                    d, anc = d[idx], anc[idx]
                scores.append(s)
                deltas.append(d)
                priors.append(anc)
                levels.append(torch.full((len(s),), lvl, dtype=torch.int64, device=s.device))
                index.append(idx + start)
                start += cls.shape[1] * cls.shape[2] * cls.shape[3]
            boxes = self.bbox_coder.decode(torch.cat(priors), torch.cat(deltas), max_shape=shape)
            scores, levels, index = torch.cat(scores), torch.cat(levels), torch.cat(index)
            ok = ((boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)).nonzero().squeeze(1)
            boxes, scores, levels, index = boxes[ok], scores[ok], levels[ok], index[ok]
            keep = level_nms(boxes, scores, levels, iou)[:max_per_img]
            results.append((boxes[keep], scores[keep], levels[keep]) + ((index[keep],) if return_index else ()))
        return results

    def proposals_at(self, cls_scores, bbox_preds, anchors, img_shapes, index):
        """The proposals of given anchors, without selection: index per image [K] into the image's anchors of all
        levels (predict_proposals' return_index). Returns per image (boxes [K, 4], scores [K], level_ids [K]), as
        predict_proposals computes them for those anchors (a float32 run on the float64 run's selection)."""
        sizes = [c.shape[1] * c.shape[2] * c.shape[3] for c in cls_scores]
        all_levels = torch.cat([torch.full((n,), lvl, dtype=torch.int64) for lvl, n in enumerate(sizes)])
        priors = torch.cat(list(anchors))
        results = []
        for i, (shape, idx) in enumerate(zip(img_shapes, index)):
            s = torch.cat([_flat_cls(c[i:i + 1].detach())[0] for c in cls_scores]).sigmoid()[idx]
            d = torch.cat([_flat_reg(r[i:i + 1].detach())[0] for r in bbox_preds])[idx]
            results.append((self.bbox_coder.decode(priors[idx], d, max_shape=shape), s, all_levels.to(idx.device)[idx]))
        return results
