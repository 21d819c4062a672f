"""float64 NumPy reference of Faster/Libra R-CNN's RPN (../shared/specs/libra_rcnn.md B.4, B.10, B.11): mmdet's
anchors (with their float32 base), the head's forward, targets from an assignment and sampled indices, the losses
with analytic gradients w.r.t. the head outputs, and the proposals with a textbook greedy NMS.

Independent of both twins (torch_ref/heads/rpn_head.py, paddle_impl/heads/rpn_head.py): convolutions by im2col,
the NMS as the per-box loop. Layouts as the twins': cls [N, A, H, W], reg [N, 4A, H, W] per level."""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .box_coder import delta_decode, delta_encode
from .common import bce_with_logits, f64, sigmoid

AVG_EPS = float(np.finfo(np.float32).eps)
STRIDES = (4, 8, 16, 32, 64)
RATIOS = (0.5, 1.0, 2.0)
SCALES = (8.0,)


def base_anchors(stride, ratios=RATIOS, scales=SCALES, center_offset=0.0):
    """(A, 4) float32 as mmdet's gen_single_level_base_anchors computes them (float32 operations, its order)."""
    r, s = np.asarray(ratios, np.float32), np.asarray(scales, np.float32)
    h_ratios = np.sqrt(r)
    w_ratios = np.float32(1) / h_ratios
    ws = (stride * w_ratios[:, None] * s[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * s[None, :]).reshape(-1)
    c = np.float32(center_offset * stride)
    return np.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], axis=-1)


def grid_anchors(feature_sizes, strides=STRIDES, dtype=np.float64, center_offset=0.0):
    """[(H*W*A, 4)] per level: location-major (y outer, x inner), anchors fastest."""
    out = []
    for stride, (h, w) in zip(strides, feature_sizes):
        base = base_anchors(stride, center_offset=center_offset).astype(dtype)
        yy, xx = np.meshgrid(np.arange(h, dtype=dtype) * stride, np.arange(w, dtype=dtype) * stride, indexing="ij")
        shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
        out.append((shifts + base[None]).reshape(-1, 4))
    return out


def valid_flags(feature_sizes, pad_shape, strides=STRIDES, num_anchors=3):
    out = []
    for stride, (h, w) in zip(strides, feature_sizes):
        valid = np.zeros((h, w), bool)
        valid[:min(int(math.ceil(pad_shape[0] / stride)), h), :min(int(math.ceil(pad_shape[1] / stride)), w)] = True
        out.append(np.repeat(valid.reshape(-1), num_anchors))
    return out


def conv2d(x, weight, bias, padding):
    k = weight.shape[-1]
    xp = np.pad(f64(x), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))                # [N, C, H, W, k, k]
    return np.tensordot(win, f64(weight), axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2) + f64(bias)[:, None, None]


def head_forward(state, feats):
    """state: the head's state_dict as NumPy (rpn_conv.*, rpn_cls.*, rpn_reg.*) -> (cls list, reg list)."""
    cls, reg = [], []
    for x in feats:
        y = np.maximum(conv2d(x, state["rpn_conv.weight"], state["rpn_conv.bias"], 1), 0.0)
        cls.append(conv2d(y, state["rpn_cls.weight"], state["rpn_cls.bias"], 0))
        reg.append(conv2d(y, state["rpn_reg.weight"], state["rpn_reg.bias"], 0))
    return cls, reg


def flat_cls(x):
    return x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)


def flat_reg(x):
    return x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1, 4)


def get_targets(anchors, valid, gt_boxes, gt_inds, pos_inds, neg_inds):
    """As mmdet's _get_targets_single + images_to_levels; valid: per image, a list of per-level flags."""
    flat = np.concatenate(anchors)
    per_image, total = [], 0
    for v, gt, inds, pos, neg in zip(valid, gt_boxes, gt_inds, pos_inds, neg_inds):
        to_all = np.nonzero(np.concatenate(v))[0]
        labels, lw = np.ones(len(flat), np.int64), np.zeros(len(flat))
        tgt, bw = np.zeros((len(flat), 4)), np.zeros((len(flat), 4))
        p = to_all[pos]
        labels[p], lw[p], bw[p] = 0, 1.0, 1.0
        if len(p):
            tgt[p] = delta_encode(flat[p], f64(gt)[inds[pos] - 1])
        lw[to_all[neg]] = 1.0
        per_image.append((labels, lw, tgt, bw))
        total += max(len(pos), 1) + max(len(neg), 1)
    cuts = np.cumsum([len(a) for a in anchors])[:-1]
    return (*[np.split(np.stack(t), cuts, axis=1) for t in zip(*per_image)], total)


def loss(cls_scores, bbox_preds, labels, label_weights, bbox_targets, bbox_weights, avg_factor, eps=AVG_EPS):
    """({"loss_rpn_cls", "loss_rpn_bbox"}, {"cls_scores": [...], "bbox_preds": [...]}): values and gradients of
    each loss w.r.t. the head outputs, in their [N, A, H, W] / [N, 4A, H, W] layouts."""
    denom = avg_factor + eps
    loss_cls = loss_bbox = 0.0
    g_cls, g_reg = [], []
    for cls, reg, lab, lw, tgt, bw in zip(cls_scores, bbox_preds, labels, label_weights, bbox_targets, bbox_weights):
        x, t = flat_cls(cls), (lab == 0).astype(np.float64)
        loss_cls += (bce_with_logits(x, t) * lw).sum() / denom
        d = flat_reg(reg) - tgt
        loss_bbox += (np.abs(d) * bw).sum() / denom
        n, a, h, w = cls.shape
        g_cls.append(((sigmoid(x) - t) * lw / denom).reshape(n, h, w, a).transpose(0, 3, 1, 2))
        g_reg.append((np.sign(d) * bw / denom).reshape(n, h, w, 4 * a).transpose(0, 3, 1, 2))
    return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}, {"cls_scores": g_cls, "bbox_preds": g_reg}


def greedy_nms(boxes, scores, groups, iou_thr):
    """Textbook greedy NMS, score descending with ties by index; IoU > thr suppresses within a group; no +1.
    Returns the kept indices in processing order (= score descending)."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept, by_group = [], {}
    for i in order:
        k = np.array(by_group.setdefault(groups[i], []), np.int64)
        w = np.maximum(np.minimum(boxes[i, 2], boxes[k, 2]) - np.maximum(boxes[i, 0], boxes[k, 0]), 0.0)
        h = np.maximum(np.minimum(boxes[i, 3], boxes[k, 3]) - np.maximum(boxes[i, 1], boxes[k, 1]), 0.0)
        inter = w * h
        if not np.any(inter / (area[k] + area[i] - inter) > iou_thr):
            kept.append(i)
            by_group[groups[i]].append(i)
    return np.array(kept, np.int64)


def predict_proposals(cls_scores, bbox_preds, anchors, img_shapes, nms_pre=1000, max_per_img=1000, iou=0.7,
                      per_level=True):
    """Per image (boxes, scores, level_ids) as mmdet's _predict_by_feat_single + _bbox_post_process; mmcv's nms
    takes the threshold as a float32. per_level=False: one NMS across levels (a planted defect)."""
    results = []
    for i, shape in enumerate(img_shapes):
        scores, deltas, priors, levels = [], [], [], []
        for lvl, (cls, reg, anc) in enumerate(zip(cls_scores, bbox_preds, anchors)):
            s, d = sigmoid(flat_cls(cls[i:i + 1])[0]), flat_reg(reg[i:i + 1])[0]
            if 0 < nms_pre < len(s):
                idx = np.argsort(-s, kind="stable")[:nms_pre]
                s, d, anc = s[idx], d[idx], anc[idx]
            scores.append(s)
            deltas.append(d)
            priors.append(f64(anc))
            levels.append(np.full(len(s), lvl, np.int64))
        boxes = delta_decode(np.concatenate(priors), np.concatenate(deltas), max_shape=shape)
        scores, levels = np.concatenate(scores), np.concatenate(levels)
        ok = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        boxes, scores, levels = boxes[ok], scores[ok], levels[ok]
        groups = levels if per_level else np.zeros_like(levels)
        keep = greedy_nms(boxes, scores, groups, float(np.float32(iou)))[:max_per_img]
        results.append((boxes[keep], scores[keep], levels[keep]))
    return results
