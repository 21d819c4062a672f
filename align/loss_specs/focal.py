"""Sigmoid focal loss (alpha 0.25, gamma 2): weighted sum, and 'none' without weight (torchvision's call)."""
import numpy as np

from align.loss_specs import LossCase
from align.loss_specs.common import logits, one_hot, stateless_spec, weights

GRAD_WRT = ("pred", "target", "weight")


def parts(lib):
    return {"sum": lambda pred, target, weight: lib.sigmoid_focal_loss(pred, target, weight),
            "none": lambda pred, target, weight: lib.sigmoid_focal_loss(pred, target, reduction="none")}


def _case(name, pred, target, weight, note=""):
    return LossCase(name, [{"pred": pred, "target": target, "weight": weight}], GRAD_WRT, note)


def make_cases(rng):
    n, c = 200, 8
    big_n, big_c = 8000, 80
    return [
        _case("random", logits(rng, (n, c)), one_hot(rng, n, c, 0.3), weights(rng, (n, 1)),
              "weight (N, 1): an anchor weight broadcast over the classes"),
        _case("extreme_logits", rng.choice([-30.0, -17.0, 17.0, 30.0], size=(n, c)), one_hot(rng, n, c, 0.5),
              weights(rng, (n, c)), "logits +-30 and +-17 (float32 sigmoid is 1 from 17), right and wrong"),
        _case("bin_edges", np.zeros((4, 3)), np.array([[0.0, 0.5, 1.0]] * 4), np.array([[1.0, 0.0, 2.0]] * 4),
              "no bins in focal loss: its edge points are logit 0 (p = 1/2), soft target 1/2, weight 0"),
        _case("no_positives", logits(rng, (n, c)), np.zeros((n, c)), weights(rng, (n, c))),
        _case("all_ignored", logits(rng, (n, c)), one_hot(rng, n, c, 0.3), np.zeros((n, c))),
        _case("single_element", logits(rng, (1, 1)), np.ones((1, 1)), np.ones((1, 1))),
        _case("large_batch", logits(rng, (big_n, big_c)), one_hot(rng, big_n, big_c, 0.02),
              weights(rng, (big_n, big_c)), "8000 anchors x 80 classes"),
    ]


SPEC = stateless_spec("focal", parts, make_cases,
                      "sigmoid focal loss, alpha 0.25, gamma 2 (torchvision semantics) with an element weight")
