"""float64 NumPy reference of AP-Loss (cccorn/AP-loss), written as the official per-positive loop.

Deliberately the straightforward definition (no sorting tricks, no vectorised assignment) so that it is an
independent check of the fast implementations in torch_ref/ and paddle_impl/:
- ap_loss_loop: value and gradient of the ranking loss (delta, threshold filter, interpolated precision);
- assign: the official anchor assignment (legacy +1 IoU, ties included) and legacy box encoding;
- regression_loss: smooth L1 value and the official gradient divided by 4 * num_pos;
- aploss_module: both parts together, as APLoss computes them.
"""
import numpy as np

BOX_STDS = np.array([0.1, 0.1, 0.2, 0.2])


def ap_loss_loop(logits, targets, delta=1.0):
    """-> (loss, grad) for logits of any shape; targets 1 positive, 0 negative, -1 ignored."""
    x = np.asarray(logits, np.float64).reshape(-1)
    t = np.asarray(targets).reshape(-1)
    grad = np.zeros_like(x)
    if not np.any(t == 1):
        return 0.0, grad.reshape(np.shape(logits))
    labels_p = t == 1
    fg = x[labels_p]
    threshold = fg.min() - delta
    valid_n = (t == 0) & (x >= threshold)
    bg = x[valid_n]
    bg_grad = np.zeros_like(bg)
    prec = np.zeros_like(fg)
    max_prec = 0.0
    for i in np.argsort(fg, kind="stable"):
        tmp1 = np.clip((fg - fg[i]) / (2 * delta) + 0.5, 0, 1)
        tmp2 = np.clip((bg - fg[i]) / (2 * delta) + 0.5, 0, 1)
        a = tmp1.sum() + 0.5
        b = tmp2.sum()
        tmp2 = tmp2 / (a + b)
        current = a / (a + b)
        if max_prec <= current:
            max_prec = current
        else:
            tmp2 = tmp2 * ((1 - max_prec) / (1 - current))
        bg_grad += tmp2
        prec[i] = max_prec
    grad[valid_n] = bg_grad
    grad[labels_p] = -(1 - prec)
    num = len(fg)
    return 1.0 - prec.sum() / num, (grad / num).reshape(np.shape(logits))


def calc_iou(anchors, boxes):
    """(A, 4) x (M, 4) -> (A, M) IoU with the legacy +1 widths, in float64 like the official calc_iou."""
    a = np.asarray(anchors, np.float64)
    b = np.asarray(boxes, np.float64)
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = np.minimum(a[:, 2:3], b[:, 2]) - np.maximum(a[:, 0:1], b[:, 0]) + 1
    ih = np.minimum(a[:, 3:4], b[:, 3]) - np.maximum(a[:, 1:2], b[:, 1]) + 1
    iw, ih = np.maximum(iw, 0), np.maximum(ih, 0)
    ua = ((a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1))[:, None] + area - iw * ih
    return iw * ih / ua


def encode(anchors, boxes):
    """Legacy (+1) box deltas divided by BOX_STDS; gt widths clipped to >= 1 after the centres."""
    aw = anchors[:, 2] - anchors[:, 0] + 1.0
    ah = anchors[:, 3] - anchors[:, 1] + 1.0
    ax = anchors[:, 0] + 0.5 * (aw - 1.0)
    ay = anchors[:, 1] + 0.5 * (ah - 1.0)
    gw = boxes[:, 2] - boxes[:, 0] + 1.0
    gh = boxes[:, 3] - boxes[:, 1] + 1.0
    gx = boxes[:, 0] + 0.5 * (gw - 1.0)
    gy = boxes[:, 1] + 0.5 * (gh - 1.0)
    gw, gh = np.maximum(gw, 1), np.maximum(gh, 1)
    d = np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], axis=1)
    return d / BOX_STDS


def assign(anchors, annotations, num_classes):
    """-> targets (B, A, C) int64 in {-1, 0, 1}, positive (B, A) bool, reg_targets (B, A, 4) (0 off positives)."""
    anchors = np.asarray(anchors, np.float64)
    annotations = np.asarray(annotations, np.float64)
    batch, num_anchors = annotations.shape[0], anchors.shape[0]
    targets = np.full((batch, num_anchors, num_classes), -1, np.int64)
    positive = np.zeros((batch, num_anchors), bool)
    reg_targets = np.zeros((batch, num_anchors, 4))
    for j in range(batch):
        gts = annotations[j][annotations[j][:, 4] != -1]
        if len(gts) == 0:
            targets[j] = 0
            continue
        iou = calc_iou(anchors, gts[:, :4])
        iou_max = iou.max(axis=1)
        iou_argmax = iou.argmax(axis=1)          # NumPy returns the first maximal index
        pos = np.zeros(num_anchors, bool)
        pos[np.where(iou == iou.max(axis=0))[0]] = True   # every anchor attaining a column max, ties included
        pos |= iou_max >= 0.5
        neg = iou_max < 0.4
        assigned = gts[iou_argmax]
        targets[j][neg] = 0
        targets[j][pos] = 0
        for a in np.nonzero(pos)[0]:
            targets[j, a, int(assigned[a, 4])] = 1
        positive[j] = pos
        reg_targets[j][pos] = encode(anchors[pos], assigned[pos])
    return targets, positive, reg_targets


def regression_loss(reg_preds, reg_targets, positive):
    """Smooth L1 (beta 1) over positives / max(num_pos, 1); gradient: the official one, / (4 max(num_pos, 1))."""
    reg_preds = np.asarray(reg_preds, np.float64)
    num_pos = max(int(positive.sum()), 1)
    diff = np.where(positive[..., None], reg_preds - reg_targets, 0.0)
    ad = np.abs(diff)
    value = np.where(ad <= 1.0, 0.5 * ad ** 2, ad - 0.5).sum() / num_pos
    grad = np.where(ad <= 1.0, diff, np.sign(diff)) / (4 * num_pos)
    return value, grad


def aploss_module(cls_logits, reg_preds, anchors, annotations, delta=1.0):
    """-> ({"cls_loss", "reg_loss"}, {"cls_logits": grad, "reg_preds": grad}) for the sum of both losses."""
    targets, positive, reg_targets = assign(anchors, annotations, np.shape(cls_logits)[-1])
    cls_loss, cls_grad = ap_loss_loop(cls_logits, targets, delta)
    reg_loss, reg_grad = regression_loss(reg_preds, reg_targets, positive)
    return {"cls_loss": cls_loss, "reg_loss": reg_loss}, {"cls_logits": cls_grad, "reg_preds": reg_grad}
