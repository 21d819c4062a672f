"""Smooth L1 (beta 1, weighted sum; beta 0.11, mean) and L1 (sum) on one input set."""
import numpy as np

from align.loss_specs import LossCase
from align.loss_specs.common import stateless_spec, weights

GRAD_WRT = ("pred", "target", "weight")
BETAS = (1.0, 0.11)


def parts(lib):
    return {"smooth_l1": lambda pred, target, weight: lib.smooth_l1_loss(pred, target, 1.0, weight),
            "smooth_l1_beta0.11_mean": lambda pred, target, weight: lib.smooth_l1_loss(pred, target, 0.11,
                                                                                       reduction="mean"),
            "l1": lambda pred, target, weight: lib.l1_loss(pred, target, weight)}


def regression_step(rng, n, spread=1.0):
    target = rng.normal(0.0, 1.0, size=(n, 4))
    return {"pred": target + rng.normal(0.0, spread, size=(n, 4)), "target": target,
            "weight": weights(rng, (n, 4))}


def regression_cases(rng, kinks, kink_note):
    """The standard cases of an elementwise regression loss of d = pred - target; `kinks` are |d| values
    where its definition switches branch (placed exactly, with both signs, in bin_edges)."""
    n = 200
    extreme = regression_step(rng, n)
    extreme["pred"] = extreme["target"] + rng.choice([-1e3, -30.0, -1e-9, 0.0, 1e-9, 30.0, 1e3], size=(n, 4))
    d = np.array([0.0] + [s * k for k in kinks for s in (1.0, -1.0)])[:, None]
    edge = {"pred": d + 0.0, "target": np.zeros_like(d), "weight": np.ones_like(d)}
    ignored = regression_step(rng, n)
    ignored["weight"][:] = 0.0
    empty = {"pred": np.zeros((0, 4)), "target": np.zeros((0, 4)), "weight": np.zeros((0, 4))}
    return [
        LossCase("random", [regression_step(rng, n)], GRAD_WRT),
        LossCase("extreme_logits", [extreme], GRAD_WRT, "|d| in {1e3, 30, 1e-9, 0}"),
        LossCase("bin_edges", [edge], GRAD_WRT, kink_note),
        LossCase("no_positives", [empty], GRAD_WRT, "no positives: empty (0, 4) inputs, loss 0 (mean too)"),
        LossCase("all_ignored", [ignored], GRAD_WRT, "every weight 0"),
        LossCase("single_element", [regression_step(rng, 1)], GRAD_WRT, "one box (1, 4)"),
        LossCase("large_batch", [regression_step(rng, 100000)], GRAD_WRT, "100000 boxes"),
    ]


def make_cases(rng):
    return regression_cases(rng, BETAS, "no bins: d = 0 (L1 kink) and |d| = beta exactly for beta 1 and 0.11")


SPEC = stateless_spec("smooth_l1", parts, make_cases,
                      "smooth L1 (beta 1 weighted sum, beta 0.11 mean) and L1 (mmdetection definitions)")
