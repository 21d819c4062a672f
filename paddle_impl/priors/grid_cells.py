"""PP-YOLOE's anchor points and ATSS anchor boxes on the feature grids (twin: torch_ref/priors/grid_cells.py).

Per level with stride s and feature size (h, w), row-major (y outer, x inner), levels in head order:
centres ((x + offset) * s, (y + offset) * s); ATSS boxes are the centres +- scale * s / 2 in x1y1x2y2
(PaddleDetection's docstring says xmin, xmax, ymin, ymax; the order is x1, y1, x2, y2). PaddleDetection builds
them in float32 and lets float64 runs promote; the values are exact, so building them in the working dtype
is the same.
"""
import paddle


def grid_points(sizes, offset=0.5, dtype="float32"):
    """[(h*w, 2)] per level: (x + offset, y + offset) in grid units."""
    points = []
    for h, w in sizes:
        y, x = paddle.meshgrid(paddle.arange(h, dtype=dtype) + offset, paddle.arange(w, dtype=dtype) + offset)
        points.append(paddle.stack([x, y], axis=-1).reshape([-1, 2]))
    return points


def eval_anchor_points(sizes, strides, offset=0.5, dtype="float32"):
    """PPYOLOEHead._generate_anchors: anchor points (L, 2) in grid units and their strides (L, 1)."""
    points = grid_points(sizes, offset, dtype)
    stride_tensor = [paddle.full([p.shape[0], 1], float(s), dtype=dtype) for p, s in zip(points, strides)]
    return paddle.concat(points), paddle.concat(stride_tensor)


def generate_anchors_for_grid_cell(sizes, strides, cell_scale=5.0, offset=0.5, dtype="float32"):
    """Training anchors: ATSS boxes (L, 4) and points (L, 2) in pixels, anchors per level, strides (L, 1)."""
    anchors, points, strides_out, counts = [], [], [], []
    for p, s in zip(grid_points(sizes, offset, dtype), strides):
        centre = p * s
        half = cell_scale * s * 0.5
        anchors.append(paddle.concat([centre - half, centre + half], axis=-1))
        points.append(centre)
        strides_out.append(paddle.full([p.shape[0], 1], float(s), dtype=dtype))
        counts.append(p.shape[0])
    return paddle.concat(anchors), paddle.concat(points), counts, paddle.concat(strides_out)
