"""Balanced L1 (alpha 0.5, gamma 1.5, beta 1): weighted sum and unweighted mean."""
from align.loss_specs.common import stateless_spec
from align.loss_specs.smooth_l1 import regression_cases


def parts(lib):
    return {"sum": lambda pred, target, weight: lib.balanced_l1_loss(pred, target, weight=weight),
            "mean": lambda pred, target, weight: lib.balanced_l1_loss(pred, target, reduction="mean")}


def make_cases(rng):
    return regression_cases(rng, (1.0,), "no bins: d = 0 and |d| = beta = 1 exactly (branch switch)")


SPEC = stateless_spec("balanced_l1", parts, make_cases,
                      "balanced L1 (Libra R-CNN), alpha 0.5, gamma 1.5, beta 1; no positives -> 0")
