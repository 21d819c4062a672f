"""float64 NumPy reference of Libra R-CNN's R-CNN box branch (../shared/specs/libra_rcnn.md B.5.5-B.5.9, B.6):
mmdet's RoI level mapping, RoIAlign (aligned, adaptive sampling) written directly, the head's forward,
targets, losses with analytic gradients, and the test-time post-processing with a greedy NMS.

Independent of both twins: RoIAlign is the separable form of torchvision's bilinear sampling, out[c, p, q] =
sum_h sum_w Wy[p, h] f[c, h, w] Wx[q, w] / count; the NMS is the textbook loop."""
import numpy as np

from .balanced_l1 import balanced_l1_loss
from .box_coder import delta_decode, delta_encode
from .common import f64

AVG_EPS = float(np.finfo(np.float32).eps)
STDS = (0.1, 0.1, 0.2, 0.2)


def map_roi_levels(rois, num_levels=4, finest_scale=56, eps=1e-6):
    scale = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    return np.clip(np.floor(np.log2(scale / finest_scale + eps)), 0, num_levels - 1).astype(np.int64)


def _axis_weights(start, size, out, grid, length):
    """[K, out, length]: summed bilinear weights of each output bin's `grid` samples along one axis.
    A sample outside [-1, length] weighs 0; inside it is clamped to [0, length - 1] (torchvision's rule)."""
    k = len(start)
    g = max(int(grid.max(initial=0)), 1)
    bin_size = size / out
    it = np.arange(g)
    # sample positions [K, out, g]: start + p * bin + (i + 0.5) * bin / grid
    pos = (start[:, None, None] + np.arange(out)[None, :, None] * bin_size[:, None, None]
           + (it[None, None, :] + 0.5) * bin_size[:, None, None] / np.maximum(grid, 1)[:, None, None])
    used = (it[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= length)
    y = np.maximum(pos, 0.0)
    low = np.floor(y).astype(np.int64)
    at_end = low >= length - 1
    low = np.where(at_end, length - 1, low)
    high = np.where(at_end, length - 1, low + 1)
    frac = np.where(at_end, 0.0, y - low)
    w = np.zeros((k, out, length))
    kk, pp = np.meshgrid(np.arange(k), np.arange(out), indexing="ij")
    for lo_hi, wt in ((low, 1.0 - frac), (high, frac)):
        np.add.at(w, (np.broadcast_to(kk[..., None], pos.shape), np.broadcast_to(pp[..., None], pos.shape),
                      lo_hi), np.where(used, wt, 0.0))
    return w


def roi_align(feat, rois, out_size=7, spatial_scale=1.0, sampling_ratio=0, aligned=True):
    """feat [B, C, H, W], rois [K, 5] -> [K, C, out, out]; sampling_ratio <= 0: ceil(roi size / out) per bin."""
    feat, rois = f64(feat), f64(rois)
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:3] * spatial_scale - offset
    size = rois[:, 3:5] * spatial_scale - offset - start
    if not aligned:
        size = np.maximum(size, 1.0)
    grid = (np.full(size.shape, sampling_ratio) if sampling_ratio > 0 else np.ceil(size / out_size)).astype(np.int64)
    wx = _axis_weights(start[:, 0], size[:, 0], out_size, grid[:, 0], feat.shape[3])
    wy = _axis_weights(start[:, 1], size[:, 1], out_size, grid[:, 1], feat.shape[2])
    count = np.maximum(grid[:, 0] * grid[:, 1], 1).astype(np.float64)
    out = np.zeros((len(rois), feat.shape[1], out_size, out_size))
    img = rois[:, 0].astype(np.int64)
    for b in range(feat.shape[0]):                                    # per image
        sel = img == b
        out[sel] = np.einsum("kph,chw,kqw->kcpq", wy[sel], feat[b], wx[sel]) / count[sel, None, None, None]
    return out


def extract_roi_feats(feats, rois, strides=(4, 8, 16, 32), out_size=7, finest_scale=56, level_eps=1e-6):
    levels = map_roi_levels(f64(rois), len(strides), finest_scale, level_eps)
    out = np.zeros((len(rois), feats[0].shape[1], out_size, out_size))
    for lvl, stride in enumerate(strides):                            # per level
        sel = levels == lvl
        out[sel] = roi_align(feats[lvl], f64(rois)[sel], out_size, 1.0 / stride)
    return out


def head_forward(state, roi_feats):
    """state: the torch twin's state_dict as arrays (Linear weights [out, in])."""
    x = f64(roi_feats).reshape(len(roi_feats), -1)
    for i in range(2):
        x = np.maximum(x @ state[f"shared_fcs.{i}.weight"].T + state[f"shared_fcs.{i}.bias"], 0.0)
    return x @ state["fc_cls.weight"].T + state["fc_cls.bias"], x @ state["fc_reg.weight"].T + state["fc_reg.bias"]


def get_targets(pos_priors, neg_priors, pos_gt_boxes, pos_gt_labels, num_classes=80, stds=STDS):
    labels, lw, targets, weights = [], [], [], []
    for pos, neg, gt, gl in zip(pos_priors, neg_priors, pos_gt_boxes, pos_gt_labels):
        p, n = len(pos), len(neg)
        labels += [np.asarray(gl, np.int64), np.full(n, num_classes, np.int64)]
        lw.append(np.ones(p + n))
        targets += [delta_encode(f64(pos).reshape(-1, 4), f64(gt).reshape(-1, 4), stds=stds), np.zeros((n, 4))]
        weights += [np.ones((p, 4)), np.zeros((n, 4))]
    return np.concatenate(labels), np.concatenate(lw), np.concatenate(targets), np.concatenate(weights)


def loss(cls_score, bbox_pred, labels, label_weights, bbox_targets, bbox_weights, num_classes=80, eps=AVG_EPS):
    """-> ({"loss_cls", "loss_bbox", "acc"}, {"cls_score": d loss_cls, "bbox_pred": d loss_bbox})."""
    x = f64(cls_score)
    z = x - x.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    r = np.arange(len(x))
    denom_cls = max(float((f64(label_weights) > 0).sum()), 1.0) + eps
    loss_cls = -(logp[r, labels] * label_weights).sum() / denom_cls
    onehot = np.zeros_like(x)
    onehot[r, labels] = 1.0
    g_cls = (np.exp(logp) - onehot) * f64(label_weights)[:, None] / denom_cls
    pos = np.nonzero((labels >= 0) & (labels < num_classes))[0]
    d = f64(bbox_pred).reshape(len(x), num_classes, 4)
    value, grads = balanced_l1_loss(d[pos, labels[pos]], f64(bbox_targets)[pos], weight=f64(bbox_weights)[pos])
    denom_box = len(bbox_targets) + eps
    g_box = np.zeros_like(d)
    g_box[pos, labels[pos]] = grads["pred"] / denom_box
    acc = 100.0 * (x.argmax(1) == labels).sum() / max(len(x), 1)
    return ({"loss_cls": loss_cls, "loss_bbox": value / denom_box, "acc": acc},
            {"cls_score": g_cls, "bbox_pred": g_box.reshape(len(x), -1)})


def greedy_nms(boxes, scores, labels, iou_thr):
    """Textbook per-class greedy NMS: score descending, ties by index; IoU > thr suppresses; no +1."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    for i in order:
        k = np.array([j for j in kept if labels[j] == labels[i]], np.int64)
        w = np.minimum(boxes[i, 2], boxes[k, 2]) - np.maximum(boxes[i, 0], boxes[k, 0])
        h = np.minimum(boxes[i, 3], boxes[k, 3]) - np.maximum(boxes[i, 1], boxes[k, 1])
        inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):   # two empty boxes: NaN, not > thr: kept
            if not np.any(inter / (area[i] + area[k] - inter) > iou_thr):
                kept.append(i)
    return np.array(kept, np.int64)


def predict(rois, cls_score, bbox_pred, img_shapes, scale_factors, num_classes=80, score_thr=0.05, nms_iou=0.5,
            max_per_img=100, stds=STDS):
    """Per image (boxes, scores, labels). mmcv's nms compares IoU with a float32 threshold."""
    rois, x = f64(rois), f64(cls_score)
    z = np.exp(x - x.max(1, keepdims=True))
    probs = z / z.sum(1, keepdims=True)
    out = []
    for i, (shape, (sw, sh)) in enumerate(zip(img_shapes, scale_factors)):
        sel = rois[:, 0] == i
        n = int(sel.sum())
        boxes = delta_decode(np.repeat(rois[sel, 1:], num_classes, 0), f64(bbox_pred)[sel].reshape(-1, 4),
                             stds=stds, max_shape=shape) * np.array([1 / sw, 1 / sh, 1 / sw, 1 / sh])
        scores = probs[sel, :num_classes].reshape(-1)
        labels = np.tile(np.arange(num_classes), n)
        cand = np.nonzero(scores > score_thr)[0]
        keep = cand[greedy_nms(boxes[cand], scores[cand], labels[cand], float(np.float32(nms_iou)))][:max_per_img]
        out.append((boxes[keep], scores[keep], labels[keep]))
    return out

