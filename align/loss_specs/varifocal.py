"""Varifocal loss on probabilities (PP-YOLOE): alpha 0.75, gamma 2, gradient through the weight."""
import numpy as np

from align.loss_specs import LossCase
from align.loss_specs.common import logits, one_hot, stateless_spec
from align.numpy_ref.common import sigmoid

GRAD_WRT = ("pred_score", "gt_score", "label")


def parts(lib):
    return {"loss": lambda pred_score, gt_score, label: lib.varifocal_loss(pred_score, gt_score, label)}


def _step(rng, n, c, positive_fraction=0.1, scale=3.0):
    label = one_hot(rng, n, c, positive_fraction)
    return {"pred_score": sigmoid(logits(rng, (n, c), scale)), "gt_score": label * rng.uniform(0.05, 1.0, (n, c)),
            "label": label}


def make_cases(rng):
    n, c = 200, 8
    extreme = _step(rng, n, c, 0.5)
    extreme["pred_score"] = sigmoid(rng.choice([-30.0, -17.0, 17.0, 30.0], size=(n, c)))
    extreme["pred_score"][:4] = [[0.0] * c, [1.0] * c, [0.0] * c, [1.0] * c]
    p = np.array([[0.0, 0.5, 1.0]] * 4)
    q = np.array([[0.0] * 3, [1.0] * 3, [0.5] * 3, [0.0] * 3])
    label = np.array([[0.0] * 3, [1.0] * 3, [1.0] * 3, [1.0] * 3])
    no_pos = _step(rng, n, c, 0.0)
    ignored = {"pred_score": np.zeros((n, c)), "gt_score": np.zeros((n, c)), "label": np.zeros((n, c))}
    return [
        LossCase("random", [_step(rng, n, c)], GRAD_WRT),
        LossCase("extreme_logits", [extreme], GRAD_WRT,
                 "p = sigmoid(+-30), sigmoid(+-17) (1 in float32) and exactly 0 and 1 (floored logs)"),
        LossCase("bin_edges", [{"pred_score": p, "gt_score": q, "label": label}], GRAD_WRT,
                 "no bins: p in {0, 1/2, 1} (log floors at 0 and 1), q in {0, 1/2, 1}, label 0 and 1"),
        LossCase("no_positives", [no_pos], GRAD_WRT, "no labels, q = 0"),
        LossCase("all_ignored", [ignored], GRAD_WRT,
                 "varifocal has no ignore input: p = q = 0 and no labels make every weight 0"),
        LossCase("single_element", [_step(rng, 1, 1, 1.0)], GRAD_WRT),
        LossCase("large_batch", [_step(rng, 8400, 80, 0.01)], GRAD_WRT, "8400 anchors (640 input) x 80 classes"),
    ]


SPEC = stateless_spec("varifocal", parts, make_cases,
                      "varifocal loss on probabilities (PP-YOLOE), alpha 0.75, gamma 2, weight not detached")
