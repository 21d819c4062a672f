"""Distribution focal loss (PP-YOLOE `_df_loss`, reg_max 16): per box ('none') and weighted sum."""
import numpy as np

from align.loss_specs import LossCase
from align.loss_specs.common import logits, stateless_spec, weights

GRAD_WRT = ("pred_dist", "target", "weight")
REG_MAX = 16


def parts(lib):
    return {"none": lambda pred_dist, target, weight: lib.distribution_focal_loss(pred_dist, target, REG_MAX),
            "weighted_sum": lambda pred_dist, target, weight: lib.distribution_focal_loss(
                pred_dist, target, REG_MAX, weight=weight, reduction="sum")}


def _step(rng, n, sides=4, scale=2.0):
    return {"pred_dist": logits(rng, (n, sides, REG_MAX + 1), scale),
            "target": rng.uniform(0.0, REG_MAX - 0.01, size=(n, sides)), "weight": weights(rng, (n, 1))}


def make_cases(rng):
    n = 200
    extreme = _step(rng, n)
    extreme["pred_dist"] = rng.choice([-30.0, 0.0, 30.0], size=extreme["pred_dist"].shape)
    extreme["target"][: n // 2] = rng.choice([0.0, 1e-7, REG_MAX - 0.01, REG_MAX - 1e-6], size=(n // 2, 4))
    edge = _step(rng, REG_MAX)
    edge["target"] = np.repeat(np.arange(REG_MAX, dtype=np.float64)[:, None], 4, axis=1)
    edge["target"][:, 3] = REG_MAX - 0.01
    ignored = _step(rng, n)
    ignored["weight"][:] = 0.0
    empty = {"pred_dist": np.zeros((0, 4, REG_MAX + 1)), "target": np.zeros((0, 4)), "weight": np.zeros((0, 1))}
    return [
        LossCase("random", [_step(rng, n)], GRAD_WRT),
        LossCase("extreme_logits", [extreme], GRAD_WRT, "logits in {-30, 0, 30}; targets at 0 and just below reg_max"),
        LossCase("bin_edges", [edge], GRAD_WRT,
                 "integer targets 0..15 (right weight exactly 0) and reg_max - 0.01 (PP-YOLOE's clip)"),
        LossCase("no_positives", [empty], GRAD_WRT, "no positives: empty inputs"),
        LossCase("all_ignored", [ignored], GRAD_WRT, "every weight 0"),
        LossCase("single_element", [_step(rng, 1, sides=1)], GRAD_WRT, "one distance: (1, 1, 17)"),
        LossCase("large_batch", [_step(rng, 20000)], GRAD_WRT, "20000 positive boxes x 4 sides"),
    ]


SPEC = stateless_spec("dfl", parts, make_cases, "distribution focal loss (PP-YOLOE _df_loss), reg_max 16")
