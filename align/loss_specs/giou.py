"""GIoU loss (PaddleDetection, eps 1e-10): per box ('none') and weighted sum."""
import numpy as np

from align.loss_specs import LossCase
from align.loss_specs.common import boxes, jitter_boxes, stateless_spec, weights

GRAD_WRT = ("pred", "target", "weight")


def parts(lib):
    return {"none": lambda pred, target, weight: lib.giou_loss(pred, target),
            "weighted_sum": lambda pred, target, weight: lib.giou_loss(pred, target, reduction="sum", weight=weight)}


def _step(rng, n, scale=100.0, min_size=1.0):
    target = boxes(rng, n, scale, min_size)
    return {"pred": jitter_boxes(rng, target), "target": target, "weight": weights(rng, (n,))}


def _edge_step():
    """Ties and touching: identical boxes, shared corners/sides, boxes touching at one side (zero-width
    intersection), one box inside another, disjoint boxes."""
    t = np.array([[10.0, 10.0, 50.0, 40.0]] * 7)
    p = np.array([[10.0, 10.0, 50.0, 40.0],     # identical
                  [10.0, 10.0, 30.0, 25.0],     # shares the top-left corner
                  [50.0, 10.0, 80.0, 40.0],     # touches the right side (w_inter = 0)
                  [20.0, 15.0, 40.0, 35.0],     # inside
                  [0.0, 0.0, 60.0, 50.0],       # contains
                  [60.0, 50.0, 70.0, 60.0],     # disjoint
                  [10.0, 40.0, 50.0, 70.0]])    # touches the bottom side (h_inter = 0)
    return {"pred": p, "target": t, "weight": np.ones(7)}


def make_cases(rng):
    n = 200
    extreme = _step(rng, n, 1e4, 1e-3)
    extreme["pred"][: n // 2] += 5e4                      # far apart: giou -> -1, loss -> 2
    ignored = _step(rng, n)
    ignored["weight"][:] = 0.0
    empty = {"pred": np.zeros((0, 4)), "target": np.zeros((0, 4)), "weight": np.zeros((0,))}
    return [
        LossCase("random", [_step(rng, n)], GRAD_WRT),
        LossCase("extreme_logits", [extreme], GRAD_WRT, "coordinates up to 6e4, sizes down to 1e-3, far apart boxes"),
        LossCase("bin_edges", [_edge_step()], GRAD_WRT,
                 "no bins: max/min ties (half gradients) and clamp at 0 (touching boxes)"),
        LossCase("no_positives", [empty], GRAD_WRT, "no positives: empty (0, 4) inputs"),
        LossCase("all_ignored", [ignored], GRAD_WRT, "every weight 0"),
        LossCase("single_element", [_step(rng, 1)], GRAD_WRT, "one box"),
        LossCase("large_batch", [_step(rng, 20000)], GRAD_WRT, "20000 positive boxes"),
    ]


SPEC = stateless_spec("giou", parts, make_cases, "GIoU loss (PaddleDetection GIoULoss, eps 1e-10), x1y1x2y2 boxes")
