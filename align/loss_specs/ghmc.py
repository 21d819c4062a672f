"""GHM-C in two configurations at once: bins 10 without momentum (mmdetection default) and the paper's
bins 30 with momentum 0.75 (its acc_sum is compared after every call)."""
import numpy as np

from align.loss_specs import LossCase
from align.loss_specs.common import extreme_logits, logits, one_hot
from align.loss_specs.ghm_common import ghm_spec
from align.numpy_ref.ghm import GHMCRef, edges

CONFIGS = {"bins10": {"bins": 10, "momentum": 0.0}, "bins30_m0.75": {"bins": 30, "momentum": 0.75}}
FLOAT_TARGET = ("pred", "target", "label_weight")
INT_LABELS = ("pred", "label_weight")


def _step(rng, n, c, positive_fraction=0.3, ignored_fraction=0.1, scale=3.0):
    weight = (rng.random((n, c)) >= ignored_fraction).astype(np.float64)
    return {"pred": logits(rng, (n, c), scale), "target": one_hot(rng, n, c, positive_fraction), "label_weight": weight}


def _edge_step():
    """g = |sigmoid(x) - t| exactly on every edge of both configurations (float64): x = 0 (sigmoid 1/2) with
    t = 1/2 -+ e for e <= 1/2, x = 40 (sigmoid exactly 1) with t = 1 - e above; plus g = 1 (x = 40, t = 0)."""
    pred, target = [], []
    for cfg in CONFIGS.values():
        for e in edges(cfg["bins"], "ghmc")[:-1]:
            if e <= 0.5:
                pred += [0.0, 0.0]
                target += [0.5 - e, 0.5 + e]
            else:
                pred += [40.0]
                target += [1.0 - e]
    pred += [40.0, -40.0]
    target += [0.0, 1.0]
    pred, target = np.array(pred)[:, None], np.array(target)[:, None]
    return {"pred": pred, "target": target, "label_weight": np.ones_like(pred)}


def make_cases(rng):
    n, c = 300, 10
    labels = rng.integers(-1, c + 1, size=n)              # -1 and c are background
    extreme = _step(rng, n, c, 0.5, 0.0)
    extreme["pred"] = extreme_logits(rng, (n, c))
    big = _step(rng, 8000, 80, 0.02)
    big["label_weight"] = (rng.random(8000) >= 0.1).astype(np.float64)
    ignored = _step(rng, n, c)
    ignored["label_weight"][:] = 0.0
    no_pos = _step(rng, n, c)
    no_pos["target"][:] = 0.0
    fpn = [_step(rng, k, c) for k in (1200, 300, 80, 20, 6)]
    fpn[3]["label_weight"][:] = 0.0
    return [
        LossCase("random", [_step(rng, n, c)], FLOAT_TARGET),
        LossCase("integer_labels", [{"pred": logits(rng, (n, c)), "target": labels,
                                     "label_weight": (rng.random(n) >= 0.1).astype(np.float64)}], INT_LABELS,
                 "mmdetection v2 labels: [0, C) classes, C and -1 background; label_weight (N,)"),
        LossCase("extreme_logits", [extreme], FLOAT_TARGET,
                 "|logits| in [20, 40], a fifth exactly +-30 or +-40 (g = 1 exactly at +-40 in float64)"),
        LossCase("bin_edges", [_edge_step()], FLOAT_TARGET,
                 "g exactly equal to every edge of both configurations (exact in float64)"),
        LossCase("no_positives", [no_pos], FLOAT_TARGET),
        LossCase("all_ignored", [ignored], FLOAT_TARGET, "every label_weight 0: loss 0, acc_sum unchanged"),
        LossCase("single_element", [_step(rng, 1, 1, 1.0, 0.0)], FLOAT_TARGET),
        LossCase("large_batch", [big], FLOAT_TARGET, "8000 anchors x 80 classes, label_weight (N,)"),
        LossCase("momentum_steps", fpn, FLOAT_TARGET,
                 "5 consecutive calls (FPN levels P3..P7 sizes); step 3 all ignored, so acc_sum must keep its values"),
    ]


SPEC = ghm_spec("ghmc", "GHMC", GHMCRef, CONFIGS, make_cases,
                "GHM-C (mmdetection): bins 10 / momentum 0 and bins 30 / momentum 0.75, state compared per call")
