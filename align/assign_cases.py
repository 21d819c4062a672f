"""Seeded inputs for PP-YOLOE's assigners (ATSS, task-aligned): grid anchors, padded GT batches, predictions.

Shared by the assigner check (align/assign_runner.py) and the twins' tests (tests/test_ppyoloe_assigners.py).
GTs come padded as the head gets them (../shared/specs/ppyoloe.md A.9): labels (B, n, 1) int64, boxes
(B, n, 4) in px, pad mask (B, n, 1), n the batch's largest GT count, padding zero boxes of label 0.
"""
from __future__ import annotations

import numpy as np

ASSIGNER_NAMES = ("atss", "tal")                  # the assigner check's names (align/assign_runner.py)
STRIDES = (32, 16, 8)


def grid_anchors(height: int, width: int, strides=STRIDES):
    """ATSS anchor boxes (L, 4), anchor points (L, 2) and anchors per level for an image of height x width
    (generate_anchors_for_grid_cell, A.8), float64 NumPy."""
    import torch

    from torch_ref.priors.grid_cells import generate_anchors_for_grid_cell
    sizes = [(-(-height // s), -(-width // s)) for s in strides]
    boxes, points, counts, _ = generate_anchors_for_grid_cell(sizes, strides, dtype=torch.float64)
    return boxes.numpy(), points.numpy(), counts


def gt_case(rng, kind, batch=3, n_max=7, width=128, height=96, num_classes=5):
    """Padded GTs (B, n, ...): labels int64, boxes, pad mask. 'int' has integer corners (ties in distances and
    IoUs), 'overlap' jittered copies of one box per image (anchors positive for several GTs), 'tiny' a GT
    with no anchor centre inside, 'single' one GT in one image, 'float' random boxes. 'centred': integer
    boxes centred on anchor centres of a random level (the distances to the other levels' centres tie at the
    topk boundary), and in each image with two or more GTs the last a copy of the first with another label
    (their IoUs tie: the multi-GT rule's argmax takes the first)."""
    if kind == "single":
        batch, counts = 1, [1]
    else:
        counts = rng.integers(1, n_max + 1, batch)
        counts[0] = n_max                                    # padding in the other images
    n = max(counts)
    labels = np.zeros((batch, n, 1), np.int64)
    boxes = np.zeros((batch, n, 4))
    pad = np.zeros((batch, n, 1))
    for b, count in enumerate(counts):
        if kind == "overlap":
            base = np.concatenate([rng.uniform(10, 50, 2), rng.uniform(40, 70, 2)])
            xy = base[:2] + rng.uniform(-8, 8, (count, 2))
            wh = base[2:] + rng.uniform(-10, 10, (count, 2))
        elif kind == "centred":
            stride = rng.choice(STRIDES, count)[:, None]
            cells = rng.integers(0, [width, height], (count, 2)) // stride
            half = rng.integers(3, 40, (count, 2))
            xy, wh = (cells + 0.5) * stride - half, 2.0 * half
        else:
            xy = rng.uniform(0, [width - 12, height - 12], (count, 2))
            wh = rng.uniform(6, 70, (count, 2))
        if kind == "centred":
            box = np.concatenate([xy, xy + wh], axis=1)
        else:
            box = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1)
        if kind == "int":
            box = np.round(box)
            box[:, 2:] = np.maximum(box[:, 2:], box[:, :2] + 1)
        if kind == "tiny":
            box[0] = [1.0, 1.3, 3.1, 3.4]                    # stride-8 centres are at 4, 12, ...
        boxes[b, :count] = box
        labels[b, :count, 0] = rng.integers(0, num_classes, count)
        if kind == "centred" and count > 1:
            boxes[b, count - 1] = box[0]
            labels[b, count - 1, 0] = (labels[b, 0, 0] + 1) % num_classes
        pad[b, :count] = 1.0
    return labels, boxes, pad


def pred_boxes(rng, points, batch, kind):
    """Predicted boxes around the anchor points: containing their point (so every anchor inside a GT has a
    non-zero IoU with it), except in 'int', where integer boxes may miss the point and the GT, and in 'tied',
    where each prediction is one of three integer boxes of its image (few distinct IoUs, so tied metrics)."""
    num = len(points)
    if kind == "tied":
        corner = rng.integers(0, 80, (batch, 3, 2)).astype(float)
        choice = np.concatenate([corner, corner + rng.integers(10, 60, (batch, 3, 2))], axis=-1)
        return np.take_along_axis(choice, rng.integers(0, 3, (batch, num, 1)), axis=1)
    if kind == "int":
        corner = np.round(points + rng.uniform(-30, 10, (batch, num, 2)))
        return np.concatenate([corner, corner + rng.integers(1, 30, (batch, num, 2))], axis=-1)
    return np.concatenate([points - rng.uniform(1, 40, (batch, num, 2)),
                           points + rng.uniform(1, 40, (batch, num, 2))], axis=-1)


def pred_scores(rng, batch, num, kind, num_classes=5):
    """Class probabilities (B, L, C): three values only in 'int' and 'tied' (ties between metrics)."""
    if kind in ("int", "tied"):
        return rng.choice([0.25, 0.5, 0.75], (batch, num, num_classes))
    return rng.uniform(0.01, 1.0, (batch, num, num_classes))


def float32_exact(array):
    """A float array rounded to float32's values, kept float64: float32 and float64 runs then see the same inputs,
    and the float64 run is the exact evaluation of the float32 run's inputs."""
    array = np.asarray(array)
    return array.astype(np.float32).astype(np.float64) if np.issubdtype(array.dtype, np.floating) else array
