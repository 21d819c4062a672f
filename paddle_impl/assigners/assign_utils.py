"""Helpers of PP-YOLOE's assigners (PaddleDetection 2.6 bbox_utils.py and assigners/utils.py), in Paddle.

Twin of torch_ref/assigners/assign_utils.py; used by atss.py and task_aligned.py beside this file.
Spec: ../shared/specs/ppyoloe.md A.9, A.10 and A.14.

The first group are PaddleDetection's helpers as it writes them, on dense (B, n, L) tensors (the tests build
PaddleDetection's own dense assigners from them, as an oracle). The assigners use the second group, which
compute the same numbers on the few (GT, anchor) pairs that can be positive (the candidates, the anchors
inside a GT) and scatter them back: every entry is made by the same operations on the same operands (so it
rounds the same), and maxima, argmaxes and topk selections see the same values. No helper
loops over images, GTs or anchors. Paddle's CPU kernels broadcast slowly when both operands broadcast: the
large ones expand one operand first.
"""
import paddle
import paddle.nn.functional as F

ATSS_IOU_EPS = 1e-10        # iou_similarity (bbox_utils.py:587): GT vs anchor boxes
BATCH_IOU_EPS = 1e-9        # batch_iou_similarity (bbox_utils.py:376): GT vs predicted boxes
INSIDE_EPS = 1e-9           # check_points_inside_bboxes (assigners/utils.py:108)


# ------------------------------------------------------------------------------ PaddleDetection's helpers, dense
def _iou(box1, box2, eps):
    """IoU of broadcastable x1y1x2y2 boxes as bbox_utils computes it: no +1, sides clipped at 0, union + eps.
    The width times the height is PaddleDetection's prod(-1) over the two sides, rounded the same."""
    x1 = paddle.maximum(box1[..., 0], box2[..., 0])
    y1 = paddle.maximum(box1[..., 1], box2[..., 1])
    x2 = paddle.minimum(box1[..., 2], box2[..., 2])
    y2 = paddle.minimum(box1[..., 3], box2[..., 3])
    overlap = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area1 = (box1[..., 2] - box1[..., 0]).clip(0) * (box1[..., 3] - box1[..., 1]).clip(0)
    area2 = (box2[..., 2] - box2[..., 0]).clip(0) * (box2[..., 3] - box2[..., 1]).clip(0)
    union = area1 + area2 - overlap + eps
    return overlap / union


def iou_similarity(box1, box2, eps=ATSS_IOU_EPS):
    """(N, 4) x (M, 4) -> (N, M) IoU, x1y1x2y2."""
    return _iou(box1.unsqueeze(1), box2.unsqueeze(0), eps)


def batch_iou_similarity(box1, box2, eps=BATCH_IOU_EPS):
    """(B, N, 4) x (B, M, 4) -> (B, N, M) IoU, x1y1x2y2."""
    return _iou(box1.unsqueeze(2), box2.unsqueeze(1), eps)


def bbox_center(boxes):
    """(..., 4) x1y1x2y2 -> (..., 2) centres."""
    return paddle.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], axis=-1)


def check_points_inside_bboxes(points, bboxes, eps=INSIDE_EPS):
    """(L, 2) points x (B, n, 4) boxes -> (B, n, L) in the boxes' dtype: 1 where min(l, t, r, b) > eps."""
    x, y = points[:, 0], points[:, 1]
    xmin, ymin, xmax, ymax = (bboxes[..., i:i + 1] for i in range(4))
    ltrb_min = paddle.minimum(paddle.minimum(x - xmin, y - ymin), paddle.minimum(xmax - x, ymax - y))
    return (ltrb_min > eps).astype(bboxes.dtype)


def compute_max_iou_anchor(ious):
    """(B, n, L) -> (B, n, L): for each anchor the one-hot of its best GT over all n (first index on ties)."""
    best = ious.argmax(axis=-2, keepdim=True)
    return (paddle.arange(ious.shape[-2], dtype="int64").unsqueeze(-1) == best).astype(ious.dtype)


def gather_topk_anchors(metrics, topk, largest=True, topk_mask=None, eps=1e-9):
    """(B, n, L) -> (B, n, L) one-hot sum of the native topk along L, times topk_mask ((B, n, 1); by default
    whether the row's best metric exceeds eps)."""
    topk_metrics, topk_idxs = paddle.topk(metrics, topk, axis=-1, largest=largest)
    if topk_mask is None:
        topk_mask = (topk_metrics.max(axis=-1, keepdim=True) > eps).astype(metrics.dtype)
    is_in_topk = F.one_hot(topk_idxs, metrics.shape[-1]).sum(axis=-2).astype(metrics.dtype)
    return is_in_topk * topk_mask


# ------------------------------------------------------------------------- the same numbers, on the candidates
def paired_iou(box1, box2, eps):
    """(..., 4) x (..., 4) -> (...): the IoU of each pair, bit for bit the matching dense entry."""
    return _iou(box1, box2, eps)


def paired_inside(points, bboxes, eps=INSIDE_EPS):
    """(..., 2) points x (..., 4) boxes -> (...) bool: min(l, t, r, b) > eps for each pair."""
    return ((points[..., 0] - bboxes[..., 0] > eps) & (points[..., 1] - bboxes[..., 1] > eps)
            & (bboxes[..., 2] - points[..., 0] > eps) & (bboxes[..., 3] - points[..., 1] > eps))


def grid_levels(points, num_anchors_list):
    """[(start, xs, ys)] per level when each level's points are the row-major grid of ascending column
    coordinates xs and row coordinates ys (as generate_anchors_for_grid_cell makes them), else None."""
    levels, start = [], 0
    for count in num_anchors_list:
        if count <= 0:
            return None
        level = points[start:start + count]
        w = int((level[:, 1] == level[0, 1]).astype("int64").sum())
        if count % w:
            return None
        grid = level.reshape([count // w, w, 2])
        xs, ys = grid[0, :, 0], grid[:, 0, 1]
        if not bool(paddle.all(grid[..., 0] == xs) & paddle.all(grid[..., 1] == ys.unsqueeze(-1))
                    & paddle.all(xs[1:] > xs[:-1]) & paddle.all(ys[1:] > ys[:-1])):
            return None
        levels.append((start, xs, ys))
        start += count
    return levels


def rounded_sqrt(x):
    """sqrt rounded once to x's dtype, the same at every position. Defect (known_differences
    'sqrt_float32_lanes'): Paddle 3.3.1's CPU sqrt of float32 takes an approximate path in 8-lane chunks and the
    exact one on the tail, so on Intel CPUs equal squared distances come out 1-3 ulp apart by where they sit, and
    a topk tie goes the wrong way. Its float64 sqrt is exact, and a float32 rounded from it is correctly rounded."""
    if x.dtype == paddle.float32:
        return x.astype("float64").sqrt().astype("float32")
    return x.sqrt()


def _nearest_dense(gx, gy, centers, topk):
    """(R, 1) GT centres x (c, 2) anchor centres -> (R, topk) native topk of the smallest distances (ties: A.14
    #5). The distance is sqrt(dx*dx + dy*dy), correctly rounded: PaddleDetection's norm(2) can round differently
    in the last bit, but equal distances stay equal (on half-integer grids), and only a tie could make it matter."""
    shape = [gx.shape[0], centers.shape[0]]
    dx = gx.expand(shape) - centers[:, 0]
    dy = gy.expand(shape) - centers[:, 1]
    return paddle.topk(rounded_sqrt(dx.multiply_(dx).add_(dy.multiply_(dy))), topk, axis=-1, largest=False)[1]


def nearest_per_level(gt_bboxes, pad_gt_mask, anchor_centers, num_anchors_list, levels, topk):
    """ATSS steps 2-3: (B, n, topk * levels) indices into L of each GT's topk anchors of smallest centre distance
    on each level, in the order of the native topk on that level's whole row, levels in order.

    On a grid (levels from grid_levels) the topk smallest of dx^2 + dy^2 lie among the topk nearest columns x the
    topk nearest rows, and any anchor outside that window is at least as far as the nearer window edge; a GT
    whose window leaves any doubt (two of its topk + 1 nearest equal, or the topk-th not strictly nearer than
    both edges) takes the native topk over its whole row, so the result is the native one in every case.
    """
    batch, n = gt_bboxes.shape[:2]
    gt_centers = bbox_center(gt_bboxes).reshape([batch * n, 2])
    gx, gy = gt_centers[:, 0:1], gt_centers[:, 1:2]
    real = pad_gt_mask.reshape([-1]) > 0
    idxs, start = [], 0
    for level, count in enumerate(num_anchors_list):
        centers = anchor_centers[start:start + count]
        if levels is None:
            idxs.append(_nearest_dense(gx, gy, centers, topk) + start)
            start += count
            continue
        xs, ys = levels[level][1], levels[level][2]
        dx, dy = gx - xs, gy - ys
        dx2, dy2 = dx * dx, dy * dy
        cols, rows = min(topk, xs.shape[0]), min(topk, ys.shape[0])
        near_x, col = paddle.topk(dx2, cols, axis=-1, largest=False)
        near_y, row = paddle.topk(dy2, rows, axis=-1, largest=False)
        dist = rounded_sqrt(near_y.unsqueeze(-1) + near_x.unsqueeze(-2)).reshape([batch * n, rows * cols])
        window = (row.unsqueeze(-1) * xs.shape[0] + col.unsqueeze(-2)).reshape([batch * n, rows * cols])
        values, order = paddle.topk(dist, min(topk + 1, rows * cols), axis=-1, largest=False)
        found = paddle.take_along_axis(window, order[:, :topk], axis=1, broadcast=False)
        sure = paddle.all(values[:, 1:] > values[:, :-1], axis=-1)
        if cols < xs.shape[0]:
            sure = sure & (values[:, topk - 1] < rounded_sqrt(near_x[:, -1] + near_y[:, 0]))
        if rows < ys.shape[0]:
            sure = sure & (values[:, topk - 1] < rounded_sqrt(near_x[:, 0] + near_y[:, -1]))
        doubt = paddle.nonzero(~sure & real).squeeze(1)
        if doubt.shape[0]:
            native = _nearest_dense(paddle.gather(gx, doubt), paddle.gather(gy, doubt), centers, topk)
            found = paddle.scatter(found, doubt, native, overwrite=True)
        idxs.append(found + start)
        start += count
    return paddle.concat(idxs, axis=-1).reshape([batch, n, -1])


def segment_ids(sizes):
    """(R,) segment sizes -> (sum,) the segment of each position: repeat_interleave(arange(R), sizes), written
    as a count of the segment ends up to each position (as the torch twin writes it)."""
    ends = paddle.cumsum(sizes)
    total = int(ends[-1]) if ends.shape[0] else 0
    return paddle.bincount(ends, minlength=total + 1)[:total].cumsum()


def inside_pairs(points, levels, gt_bboxes, pad_gt_mask, eps=INSIDE_EPS):
    """The (GT, anchor) pairs of every real GT and each anchor point strictly inside it (min(l, t, r, b) > eps,
    as check_points_inside_bboxes decides it). Returns rows (b * n + g), columns (the pair's place among its
    GT's pairs), anchors and the (B * n,) pair counts per GT. On a grid a GT's inside points are a rectangle of
    columns x rows, enumerated directly; elsewhere they come from the dense mask."""
    batch, n = gt_bboxes.shape[:2]
    boxes = gt_bboxes.reshape([batch * n, 4])
    real = pad_gt_mask.reshape([-1]) > 0
    if levels is None:
        shape = [batch * n, points.shape[0], 4]
        inside = paired_inside(points, boxes.unsqueeze(1).expand(shape), eps) & real.unsqueeze(-1)
        rows, anchors = paddle.nonzero(inside, as_tuple=True)
        counts = paddle.bincount(rows, minlength=batch * n)
        columns = paddle.arange(rows.shape[0], dtype="int64") - paddle.gather(paddle.cumsum(counts) - counts, rows)
        return rows, columns, anchors, counts
    all_rows, all_columns, all_anchors = [], [], []
    counts = paddle.zeros([batch * n], dtype="int64")
    for start, xs, ys in levels:
        in_x = (xs - boxes[:, 0:1] > eps) & (boxes[:, 2:3] - xs > eps)     # an interval of the ascending xs
        in_y = (ys - boxes[:, 1:2] > eps) & (boxes[:, 3:4] - ys > eps)
        num_x, num_y = in_x.astype("int64").sum(axis=-1), in_y.astype("int64").sum(axis=-1)
        first_x, first_y = in_x.astype("int32").argmax(axis=-1), in_y.astype("int32").argmax(axis=-1)
        sizes = num_x * num_y * real.astype("int64")
        rows = segment_ids(sizes)
        offset = paddle.arange(rows.shape[0], dtype="int64") - paddle.gather(paddle.cumsum(sizes) - sizes, rows)
        width = paddle.gather(num_x, rows)
        anchors = (start + (paddle.gather(first_y, rows) + offset // width) * xs.shape[0]
                   + paddle.gather(first_x, rows) + offset % width)
        all_anchors.append(anchors)
        all_columns.append(paddle.gather(counts, rows) + offset)
        all_rows.append(rows)
        counts = counts + sizes
    return paddle.concat(all_rows), paddle.concat(all_columns), paddle.concat(all_anchors), counts


def best_gt(gt_bboxes, batch_index, boxes, eps):
    """compute_max_iou_anchor's argmax over all n GTs (first index on ties) of the IoU of image batch_index's GTs
    with each of boxes (M, 4): (M,)."""
    return _iou(paddle.gather(gt_bboxes, batch_index), boxes.unsqueeze(1), eps).argmax(axis=-1)


def assign_from_slots(slot_idx, slot_val, best_gt_of, num_anchors, gt_labels, gt_bboxes, bg_index):
    """A.9 steps 8-9 from each GT's candidate slots.

    slot_idx (B, n, S) anchor of each slot, slot_val (B, n, S) its mask_positive value (0: not positive);
    best_gt_of(batch_index (M,), anchor_index (M,)) -> (M,) the GT of largest IoU over all n with that anchor.
    Anchors positive for more than one GT go to that GT (PaddleDetection quirk: it need not be one of the GTs
    the anchor was positive for). Returns mask_positive (B, n, L), gt_index (B, L) (argmax over n of
    mask_positive: 0 where none), labels (B, L) int64 (bg_index where none) and bboxes (B, L, 4) (GT 0's there).
    """
    batch, n, slots = slot_idx.shape
    flat_idx = slot_idx.reshape([batch, n * slots])
    flat_val = slot_val.reshape([batch, n * slots])
    # mask_positive.sum(-2): a sum of zeros and ones, exact in any order
    count = paddle.zeros([batch, num_anchors], dtype=slot_val.dtype)
    count.put_along_axis_(flat_idx, flat_val, axis=1, reduce="add", broadcast=False)
    multiple = paddle.take_along_axis(count, flat_idx, axis=1, broadcast=False) > 1
    own = paddle.arange(n, dtype="int64").unsqueeze(-1).expand([n, slots]).reshape([-1])   # each slot's GT
    resolved = own.expand([batch, n * slots]).clone()
    where_b, where_s = paddle.nonzero(multiple, as_tuple=True)
    if where_b.shape[0]:
        best = best_gt_of(where_b, paddle.gather_nd(flat_idx, paddle.stack([where_b, where_s], axis=-1)))
        resolved = paddle.index_put(resolved, (where_b, where_s), best)
    # a column with several GTs becomes the one-hot of its best GT; the others keep their own value. Slots of
    # one anchor write the same value to the same place, so the max below does not depend on their order
    value = paddle.where(multiple, paddle.ones_like(flat_val), flat_val)
    # (the in-place put_along_axis_: the out-of-place one copies the whole (B, n * L) tensor first)
    mask_positive = paddle.zeros([batch, n * num_anchors], dtype=slot_val.dtype)
    mask_positive.put_along_axis_(resolved * num_anchors + flat_idx, value, axis=1, reduce="amax", broadcast=False)
    mask_positive = mask_positive.reshape([batch, n, num_anchors])
    gt_index = paddle.zeros([batch, num_anchors], dtype="int64")
    gt_index.put_along_axis_(flat_idx, paddle.where(value > 0, resolved, paddle.zeros_like(resolved)), axis=1,
                             reduce="amax", broadcast=False)
    labels = paddle.take_along_axis(gt_labels.squeeze(-1), gt_index, axis=1, broadcast=False)
    labels = paddle.where(count > 0, labels, paddle.full_like(labels, bg_index))
    bboxes = paddle.take_along_axis(gt_bboxes, gt_index.unsqueeze(-1).expand([batch, num_anchors, 4]), axis=1,
                                    broadcast=False)
    return mask_positive, gt_index, labels, bboxes


def mask_at(mask_positive, gt_index):
    """(B, L): mask_positive at each anchor's assigned GT (its only non-zero entry, 0 where none)."""
    return paddle.take_along_axis(mask_positive, gt_index.unsqueeze(1), axis=1, broadcast=False).squeeze(1)


def scores_from_labels(labels, weight, num_classes, bg_index):
    """one_hot(labels, num_classes + 1) without the bg_index column, times weight (B, L): (B, L, num_classes).
    One write per anchor (weight, or 0 where the label is bg_index) into zeros, as 1.0 * w and 0 * w are.
    (PaddleDetection's F.one_hot is float32 whatever the dtype, A.14 #7; 1.0 and 0.0 are exact in any.)"""
    keep = labels != bg_index
    column = paddle.where(keep, labels - (labels > bg_index).astype(labels.dtype), paddle.zeros_like(labels))
    scores = paddle.zeros(list(labels.shape) + [num_classes], dtype=weight.dtype)
    weight = paddle.where(keep, weight, paddle.zeros_like(weight))
    scores.put_along_axis_(column.unsqueeze(-1), weight.unsqueeze(-1), axis=-1, broadcast=False)
    return scores


# ------------------------------------------------------------------------------------------------- input checks
def check_gt_inputs(gt_labels, gt_bboxes, pad_gt_mask, num_classes, bg_index):
    """The GT inputs both assigners take; raises ValueError naming what is wrong. Returns (B, n)."""
    for name, t in (("gt_labels", gt_labels), ("gt_bboxes", gt_bboxes), ("pad_gt_mask", pad_gt_mask)):
        if not isinstance(t, paddle.Tensor) or t.ndim != 3:
            raise ValueError(f"{name} must be a 3-D tensor, got "
                             f"{tuple(t.shape) if isinstance(t, paddle.Tensor) else type(t).__name__}")
    batch, n = gt_bboxes.shape[:2]
    if gt_bboxes.shape[2] != 4 or tuple(gt_labels.shape) != (batch, n, 1) or tuple(pad_gt_mask.shape) != (batch, n, 1):
        raise ValueError(f"expected gt_bboxes (B, n, 4), gt_labels and pad_gt_mask (B, n, 1), got "
                         f"{tuple(gt_bboxes.shape)}, {tuple(gt_labels.shape)}, {tuple(pad_gt_mask.shape)}")
    if n == 0:
        # PaddleDetection 2.6 crashes on a batch without GTs (A.9.6): there is no behaviour to reproduce
        raise ValueError("the batch must have at least one GT slot (n >= 1)")
    if gt_labels.dtype != paddle.int64:
        # int32 labels crash PaddleDetection 2.6 on Paddle 3.3.1 (A.9.6)
        raise ValueError(f"gt_labels must be int64, got {gt_labels.dtype}")
    if not paddle.is_floating_point(gt_bboxes) or pad_gt_mask.dtype != gt_bboxes.dtype:
        raise ValueError(f"gt_bboxes and pad_gt_mask must share one float dtype, got {gt_bboxes.dtype} and "
                         f"{pad_gt_mask.dtype}")
    if not isinstance(bg_index, int) or isinstance(bg_index, bool) or not 0 <= bg_index <= num_classes:
        raise ValueError(f"bg_index must be an int in [0, {num_classes}], got {bg_index!r}")
    return batch, n


def check_float(name, t, dtype, shape):
    """t must be a tensor of `dtype` and `shape` (None entries match any size)."""
    if not isinstance(t, paddle.Tensor) or t.ndim != len(shape) or any(
            s is not None and s != d for s, d in zip(shape, t.shape)):
        raise ValueError(f"{name} must have shape {tuple('*' if s is None else s for s in shape)}, got "
                         f"{tuple(t.shape) if isinstance(t, paddle.Tensor) else type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype} like gt_bboxes, got {t.dtype}")
