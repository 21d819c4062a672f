"""AP-Loss anchor assignment and box encoding (cccorn/AP-loss semantics, legacy +1 box widths).

Per image: IoU in float64; positive if IoU_max >= 0.5 or the anchor attains some GT's column max (ties
included; as in the official code this also holds for a GT that overlaps no anchor, whose column max is 0);
negative if IoU_max < 0.4 (positives win); the rest ignored (-1). The assigned GT is the first maximal
column, chosen explicitly so the result does not depend on a framework's argmax tie-breaking. An image
without GT (all labels -1) is all negatives with no regression target.
"""
import torch

from torch_ref.ops.iou import legacy_iou

BOX_STDS = (0.1, 0.1, 0.2, 0.2)


def legacy_encode(anchors, boxes):
    """Legacy (+1) deltas / BOX_STDS; GT widths are clipped to >= 1 after the centres, as officially."""
    aw = anchors[:, 2] - anchors[:, 0] + 1.0
    ah = anchors[:, 3] - anchors[:, 1] + 1.0
    ax = anchors[:, 0] + 0.5 * (aw - 1.0)
    ay = anchors[:, 1] + 0.5 * (ah - 1.0)
    gw = boxes[:, 2] - boxes[:, 0] + 1.0
    gh = boxes[:, 3] - boxes[:, 1] + 1.0
    gx = boxes[:, 0] + 0.5 * (gw - 1.0)
    gy = boxes[:, 1] + 0.5 * (gh - 1.0)
    gw, gh = gw.clamp(min=1), gh.clamp(min=1)
    deltas = torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], dim=1)
    return deltas / deltas.new_tensor(BOX_STDS)


def _assign_image(anchors64, ann, num_classes, reg_dtype):
    ann64 = ann.to(torch.float64)
    valid = ann64[:, 4] != -1
    num_gt = ann64.shape[0]
    iou = torch.where(valid[None, :], legacy_iou(anchors64, ann64[:, :4]), -1.0)   # padding never matches
    # '>=' against a max is exact equality; Paddle's float '==' means |a - b| < 1e-8
    iou_max = iou.amax(dim=1)
    cols = torch.arange(num_gt, device=iou.device)
    first = torch.where(iou >= iou_max[:, None], cols, num_gt).amin(dim=1)
    attains = ((iou >= iou.amax(dim=0)[None, :]) & valid[None, :]).any(dim=1)
    positive = attains | (iou_max >= 0.5)
    negative = iou_max < 0.4
    assigned = ann[first]
    labels = assigned[:, 4].to(torch.int64)
    base = torch.where(positive | negative, 0, -1).to(torch.int32)
    onehot = (labels[:, None] == torch.arange(num_classes, device=labels.device)) & positive[:, None]
    targets = torch.where(onehot, torch.ones_like(base)[:, None], base[:, None])
    encoded = legacy_encode(anchors64.to(reg_dtype), assigned[:, :4].to(reg_dtype))
    reg_targets = torch.where(positive[:, None], encoded, 0.0)
    return targets, positive, reg_targets


@torch.no_grad()
def assign_targets(anchors, annotations, num_classes, reg_dtype):
    """anchors (A, 4), annotations (B, M, 5) [x1, y1, x2, y2, label], label -1 = padding ->
    targets (B, A, num_classes) int32 in {-1, 0, 1}, positive (B, A) bool, reg_targets (B, A, 4) reg_dtype
    (zero off the positives). A Python loop over images keeps the IoU matrix at (A, M) per image."""
    if annotations.shape[1] == 0:   # no GT slots at all: one padding row gives the same result
        annotations = torch.full((annotations.shape[0], 1, 5), -1.0, dtype=annotations.dtype,
                                 device=annotations.device)
    anchors64 = anchors.to(torch.float64)
    per_image = [_assign_image(anchors64, ann, num_classes, reg_dtype) for ann in annotations]
    return tuple(torch.stack(parts) for parts in zip(*per_image))
