"""PP-YOLOE's anchor points and ATSS anchor boxes on the feature grids (twin: paddle_impl/priors/grid_cells.py).

Per level with stride s and feature size (h, w), row-major (y outer, x inner), levels in head order:
centres ((x + offset) * s, (y + offset) * s); ATSS boxes are the centres +- scale * s / 2 in x1y1x2y2
(PaddleDetection's docstring says xmin, xmax, ymin, ymax; the order is x1, y1, x2, y2).
"""
import torch


def grid_points(sizes, offset=0.5, dtype=torch.float32, device=None):
    """[(h*w, 2)] per level: (x + offset, y + offset) in grid units."""
    points = []
    for h, w in sizes:
        y, x = torch.meshgrid(torch.arange(h, dtype=dtype, device=device) + offset,
                              torch.arange(w, dtype=dtype, device=device) + offset, indexing="ij")
        points.append(torch.stack([x, y], dim=-1).reshape(-1, 2))
    return points


def eval_anchor_points(sizes, strides, offset=0.5, dtype=torch.float32, device=None):
    """PPYOLOEHead._generate_anchors: anchor points (L, 2) in grid units and their strides (L, 1)."""
    points = grid_points(sizes, offset, dtype, device)
    stride_tensor = [torch.full((p.shape[0], 1), float(s), dtype=dtype, device=device) for p, s in zip(points, strides)]
    return torch.cat(points), torch.cat(stride_tensor)


def generate_anchors_for_grid_cell(sizes, strides, cell_scale=5.0, offset=0.5, dtype=torch.float32, device=None):
    """Training anchors: ATSS boxes (L, 4) and points (L, 2) in pixels, anchors per level, strides (L, 1)."""
    anchors, points, strides_out, counts = [], [], [], []
    for p, s in zip(grid_points(sizes, offset, dtype, device), strides):
        centre = p * s
        half = cell_scale * s * 0.5
        anchors.append(torch.cat([centre - half, centre + half], dim=-1))
        points.append(centre)
        strides_out.append(torch.full((p.shape[0], 1), float(s), dtype=dtype, device=device))
        counts.append(p.shape[0])
    return torch.cat(anchors), torch.cat(points), counts, torch.cat(strides_out)
