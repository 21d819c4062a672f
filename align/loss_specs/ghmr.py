"""GHM-R in two configurations at once: mu 0.02, bins 10 without momentum, and the paper's momentum 0.7 with
loss_weight 10 (its acc_sum is compared after every call)."""
import numpy as np

from align.loss_specs import LossCase
from align.loss_specs.ghm_common import ghm_spec
from align.numpy_ref.ghm import GHMRRef, edges

MU = 0.02
CONFIGS = {"bins10": {"mu": MU, "bins": 10, "momentum": 0.0},
           "bins10_m0.7": {"mu": MU, "bins": 10, "momentum": 0.7, "loss_weight": 10.0}}
GRAD_WRT = ("pred", "target", "label_weight")


def _step(rng, n, ignored_fraction=0.1, spread=0.05):
    target = rng.normal(0.0, 0.1, size=(n, 4))
    weight = np.repeat((rng.random((n, 1)) >= ignored_fraction).astype(np.float64), 4, axis=1)
    return {"pred": target + rng.normal(0.0, spread, size=(n, 4)), "target": target, "label_weight": weight}


def exact_edge_difference(e, mu=MU, search=256):
    """A float64 d > 0 with |d| / sqrt(mu^2 + d^2) == e exactly (as the twins evaluate it), searched among
    the neighbours of mu e / sqrt(1 - e^2); the closest one when no neighbour hits e exactly."""
    d0 = mu * e / np.sqrt(1.0 - e * e)
    best, best_err = d0, np.inf
    d = d0
    for _ in range(search):
        for cand in (d, 2 * d0 - d):
            err = abs(abs(cand / np.sqrt(mu * mu + cand * cand)) - e)
            if err < best_err:
                best, best_err = cand, err
            if err == 0:
                return cand
        d = np.nextafter(d, np.inf)
    return best


def _edge_step():
    """d = 0 (g = 0) and, for every inner edge, +-d with g == edge exactly in float64 where one exists.
    -> (inputs, number of inner edges hit exactly)."""
    diffs, exact = [0.0], 0
    for e in edges(10, "ghmr")[1:-1]:
        d = exact_edge_difference(e)
        exact += int(abs(d / np.sqrt(MU * MU + d * d)) == e)
        diffs += [d, -d]
    d = np.array(diffs)[:, None]
    return {"pred": d, "target": np.zeros_like(d), "label_weight": np.ones_like(d)}, exact


def make_cases(rng):
    n = 200
    extreme = _step(rng, n, 0.0)
    extreme["pred"] = extreme["target"] + rng.choice([-1e3, -30.0, -1e-9, 0.0, 1e-9, 30.0, 1e3], size=(n, 4))
    ignored = _step(rng, n)
    ignored["label_weight"][:] = 0.0
    empty = {"pred": np.zeros((0, 4)), "target": np.zeros((0, 4)), "label_weight": np.zeros((0, 4))}
    fpn = [_step(rng, k) for k in (2000, 500, 120, 30, 8)]
    fpn[3]["label_weight"][:] = 0.0
    edge_step, exact = _edge_step()
    return [
        LossCase("random", [_step(rng, n)], GRAD_WRT),
        LossCase("extreme_logits", [extreme], GRAD_WRT, "regression: |d| in {1e3, 30, 1e-9, 0} (g ~ 1 or ~ 0)"),
        LossCase("bin_edges", [edge_step], GRAD_WRT,
                 f"d = 0 (g = 0) and +-d with g exactly on {exact} of the 9 inner edges in float64 (searched among "
                 "the neighbours of mu e / sqrt(1 - e^2)); the others have no exact solution there and sit 1 ulp off"),
        LossCase("no_positives", [empty], GRAD_WRT, "no positive anchors: empty (0, 4) inputs, loss 0"),
        LossCase("all_ignored", [ignored], GRAD_WRT),
        LossCase("single_element", [_step(rng, 1, 0.0)], GRAD_WRT, "one box (1, 4)"),
        LossCase("large_batch", [_step(rng, 100000)], GRAD_WRT, "100000 boxes"),
        LossCase("momentum_steps", fpn, GRAD_WRT,
                 "5 consecutive calls (FPN levels); step 3 all ignored, so acc_sum must keep its values"),
    ]


SPEC = ghm_spec("ghmr", "GHMR", GHMRRef, CONFIGS, make_cases,
                "GHM-R (mmdetection): mu 0.02, bins 10, momentum 0 and 0.7 (loss_weight 10), state per call")
