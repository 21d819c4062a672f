"""mmdetection's Shared2FCBBoxHead as Libra R-CNN configures it (twin: paddle_impl/roi_heads/bbox_head.py):
two shared fc + ReLU, softmax classifier with background last, class-specific deltas (stds 0.1, 0.1, 0.2, 0.2),
softmax CE + Balanced L1 (../shared/specs/libra_rcnn.md B.3, B.5.6-B.5.9, B.6)."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.coders.box_coder import DeltaXYWHBBoxCoder
from torch_ref.losses.balanced_l1 import balanced_l1_loss
from torch_ref.ops.nms import stable_nms as class_nms

# mmdet's avg_factor eps (losses/utils.py): float32 epsilon, also for float64 inputs
AVG_EPS = float(np.finfo(np.float32).eps)


class Shared2FCBBoxHead(nn.Module):
    def __init__(self, in_channels=256, roi_feat_size=7, fc_out_channels=1024, num_classes=80,
                 target_stds=(0.1, 0.1, 0.2, 0.2), alpha=0.5, gamma=1.5, beta=1.0, loss_bbox="balanced_l1"):
        super().__init__()
        self.num_classes = num_classes
        self.bbox_coder = DeltaXYWHBBoxCoder(stds=target_stds)
        self.alpha, self.gamma, self.beta = alpha, gamma, beta   # Balanced L1 (B.1 item 2)
        if loss_bbox not in ("balanced_l1", "l1"):                 # l1: plain Faster R-CNN's L1Loss
            raise ValueError(f"loss_bbox must be 'balanced_l1' or 'l1', got {loss_bbox!r}")
        self.loss_bbox = loss_bbox
        # registration order as mmdet's (BBoxHead makes fc_cls, fc_reg before ConvFCBBoxHead's shared_fcs)
        self.fc_cls = nn.Linear(fc_out_channels, num_classes + 1)     # background is the last class
        self.fc_reg = nn.Linear(fc_out_channels, 4 * num_classes)     # [cls][dx, dy, dw, dh]
        self.shared_fcs = nn.ModuleList([nn.Linear(in_channels * roi_feat_size ** 2, fc_out_channels),
                                         nn.Linear(fc_out_channels, fc_out_channels)])
        self.init_weights()

    def init_weights(self):
        """B.3: fc_cls N(0, 0.01), fc_reg N(0, 0.001), shared fcs Xavier uniform (gain 1), every bias 0."""
        nn.init.normal_(self.fc_cls.weight, 0.0, 0.01)
        nn.init.normal_(self.fc_reg.weight, 0.0, 0.001)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
        for m in (self.fc_cls, self.fc_reg, *self.shared_fcs):
            nn.init.zeros_(m.bias)

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
            num_pos, num_neg = len(pos), len(neg)
            labels += [gt_labels.long(), gt_labels.new_full((num_neg,), self.num_classes, dtype=torch.long)]
            label_weights.append(pos.new_ones(num_pos + num_neg))
            targets += [self.bbox_coder.encode(pos, gt), pos.new_zeros((num_neg, 4))]
            weights += [pos.new_ones((num_pos, 4)), pos.new_zeros((num_neg, 4))]
        return torch.cat(labels), torch.cat(label_weights), torch.cat(targets), torch.cat(weights)

    def loss(self, cls_score, bbox_pred, labels, label_weights, bbox_targets, bbox_weights):
        """B.5.7. Returns {"loss_cls", "loss_bbox", "acc"} (acc in percent over the sampled RoIs, not a loss)."""
        num_rois = cls_score.shape[0]
        # mmdet: avg_factor = max(#(label_weights > 0), 1), a host float
        avg_factor = max(float((label_weights > 0).sum()), 1.0)
        ce = F.cross_entropy(cls_score, labels, reduction="none")
        loss_cls = (ce * label_weights).sum() / (avg_factor + AVG_EPS)
        acc = (cls_score.argmax(1) == labels).sum().to(cls_score.dtype) * (100.0 / max(num_rois, 1))
        # the gt class's 4 deltas of each positive; none: an empty sum, 0 with a zero gradient (mmdet's
        # bbox_pred[pos_inds].sum())
        pos = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        pos_pred = bbox_pred.reshape(num_rois, self.num_classes, 4)[pos, labels[pos]]
        if self.loss_bbox == "l1":
            loss = ((pos_pred - bbox_targets[pos]).abs() * bbox_weights[pos]).sum()
        else:
            loss = balanced_l1_loss(pos_pred, bbox_targets[pos], self.alpha, self.gamma, self.beta,
                                    weight=bbox_weights[pos], reduction="sum")
        # avg_factor = bbox_targets.size(0): every sampled RoI of the batch, not only positives
        return {"loss_cls": loss_cls, "loss_bbox": loss / (bbox_targets.shape[0] + AVG_EPS), "acc": acc}

    @torch.no_grad()
    def predict(self, rois, cls_score, bbox_pred, img_shapes, scale_factors, score_thr=0.05, nms_iou=0.5,
                max_per_img=100, return_index=False):
        """B.6. rois [R, 5] (image index, x1, y1, x2, y2) grouped by image in image order; img_shapes [(h, w)];
        scale_factors [(w_scale, h_scale)] of the resize. Per image (boxes [N, 4] in original-image pixels,
        scores [N], labels [N] int64), score descending, ties by (RoI, class) ascending; return_index: and each
        detection's RoI index within its image (what identifies it across frameworks)."""
        counts = torch.bincount(rois[:, 0].long(), minlength=len(img_shapes)).tolist()
        probs = F.softmax(cls_score, dim=-1)
        results = []
        for i, (r, p, d) in enumerate(zip(rois.split(counts), probs.split(counts), bbox_pred.split(counts))):
            n = len(r)
            # every class's box, clipped to the resized image, then to original pixels (mmdet multiplies by 1/s)
            boxes = self.bbox_coder.decode(r[:, None, 1:].expand(n, self.num_classes, 4),
                                           d.reshape(n, self.num_classes, 4), max_shape=img_shapes[i])
            sw, sh = scale_factors[i]
            boxes = boxes * boxes.new_tensor([1 / sw, 1 / sh, 1 / sw, 1 / sh])
            # candidates RoI-major, class-minor (mmdet's flattening), background dropped, score > thr strictly
            scores = p[:, :-1].reshape(-1)
            labels = torch.arange(self.num_classes, device=p.device).repeat(n)
            cand = (scores > score_thr).nonzero().squeeze(1)
            keep = cand[class_nms(boxes.reshape(-1, 4)[cand], scores[cand], labels[cand], nms_iou)][:max_per_img]
            results.append((boxes.reshape(-1, 4)[keep], scores[keep], labels[keep])
                           + ((keep // self.num_classes,) if return_index else ()))
        return results
