"""Both twins' losses reject the same bad input with the same ValueError and message: float16 / bfloat16 tensors
(naming the argument and the accepted dtypes) and out-of-range configuration (focal alpha and gamma, DFL
reg_max, GHM bins and momentum, ...). Each case expects one exact message, so equal messages across the twins
follow from each twin's run."""
import math

import numpy as np
import paddle
import pytest
import torch

import paddle_impl.losses as P
import paddle_impl.losses.retina_loss as P_retina
import torch_ref.losses as T
import torch_ref.losses.retina_loss as T_retina

TWINS = {"torch": (T, T_retina), "paddle": (P, P_retina)}


def _tensor(fw, a, dtype=None):
    """A tensor of `fw` from the array `a`, cast to `dtype` (a name, e.g. "bfloat16", which NumPy lacks)."""
    a = np.asarray(a)
    if fw == "torch":
        t = torch.tensor(a)
        return t if dtype is None else t.to(getattr(torch, dtype))
    t = paddle.to_tensor(a)
    return t if dtype is None else t.astype(dtype)


def _inputs():
    """loss -> (call(losses module, **tensors), float32 inputs; integer arrays stay integer)."""
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.random((4, 2)), rng.random((4, 2)) + 2], 1)
    f = np.float32
    return {
        "focal": (lambda L, **k: L.sigmoid_focal_loss(**k),
                  {"pred": rng.normal(size=(4, 3)).astype(f), "target": np.eye(4, 3, dtype=f),
                   "weight": np.ones((4, 1), f)}),
        "ghmc": (lambda L, **k: L.GHMC()(**k),
                 {"pred": rng.normal(size=(4, 3)).astype(f), "target": np.eye(4, 3, dtype=f),
                  "label_weight": np.ones((4, 3), f)}),
        "ghmr": (lambda L, **k: L.GHMR()(**k),
                 {"pred": rng.normal(size=(4, 4)).astype(f), "target": rng.normal(size=(4, 4)).astype(f),
                  "label_weight": np.ones((4, 4), f)}),
        "smooth_l1": (lambda L, **k: L.smooth_l1_loss(**k),
                      {"pred": rng.normal(size=(4, 4)).astype(f), "target": rng.normal(size=(4, 4)).astype(f)}),
        "l1": (lambda L, **k: L.l1_loss(**k),
               {"pred": rng.normal(size=(4, 4)).astype(f), "target": rng.normal(size=(4, 4)).astype(f)}),
        "balanced_l1": (lambda L, **k: L.balanced_l1_loss(**k),
                        {"pred": rng.normal(size=(4, 4)).astype(f), "target": rng.normal(size=(4, 4)).astype(f)}),
        "varifocal": (lambda L, **k: L.varifocal_loss(**k),
                      {"pred_score": rng.random((4, 3)).astype(f), "gt_score": np.eye(4, 3, dtype=f) * 0.5,
                       "label": np.eye(4, 3, dtype=f)}),
        "giou": (lambda L, **k: L.giou_loss(**k), {"pred": boxes.astype(f), "target": (boxes + 0.1).astype(f)}),
        "dfl": (lambda L, **k: L.distribution_focal_loss(**k),
                {"pred_dist": rng.normal(size=(4, 4, 17)).astype(f), "target": (rng.random((4, 4)) * 15).astype(f)}),
        "aploss": (lambda L, **k: L.ap_loss(**k),
                   {"logits": rng.normal(size=(4, 3)).astype(f), "targets": (np.eye(4, 3) > 0).astype(np.int64)}),
    }


def _dtype_cases():
    """One float argument of one loss in float16 / bfloat16, the others float32."""
    return [(loss, arg, dtype) for loss, (_, inputs) in _inputs().items() for arg, a in inputs.items()
            if a.dtype == np.float32 for dtype in ("float16", "bfloat16")]


@pytest.fixture(params=sorted(TWINS))
def fw(request):
    return request.param


@pytest.mark.parametrize("loss,arg,dtype", _dtype_cases())
def test_half_precision_input_is_refused_alike(fw, loss, arg, dtype):
    call, inputs = _inputs()[loss]
    tensors = {k: _tensor(fw, a, dtype if k == arg else None) for k, a in inputs.items()}
    with pytest.raises(ValueError) as err:
        call(TWINS[fw][0], **tensors)
    assert str(err.value) == f"{arg} must be float32 or float64, got {dtype}"


def test_the_accepted_dtypes_still_compute(fw):
    for loss, (call, inputs) in _inputs().items():
        for dtype in ("float32", "float64"):
            tensors = {k: _tensor(fw, a, dtype if a.dtype == np.float32 else None) for k, a in inputs.items()}
            out = call(TWINS[fw][0], **tensors)
            assert math.isfinite(float(out.sum())), (loss, dtype)


NAN, INF = math.nan, math.inf
ALPHA = "alpha must be a finite number in [0, 1] (or -1: no class balance), got "
CONFIG_CASES = [
    # (label, make(losses module, retina_loss module), message)
    ("focal alpha > 1", lambda L, R: L.FocalLoss(alpha=1.5), ALPHA + "1.5"),
    ("focal alpha NaN", lambda L, R: L.FocalLoss(alpha=NAN), ALPHA + "nan"),
    ("focal alpha negative", lambda L, R: L.FocalLoss(alpha=-0.25), ALPHA + "-0.25"),
    ("focal gamma negative", lambda L, R: L.FocalLoss(gamma=-1.0), "gamma must be a finite number >= 0, got -1.0"),
    ("focal gamma NaN", lambda L, R: L.FocalLoss(gamma=NAN), "gamma must be a finite number >= 0, got nan"),
    ("focal functional alpha", lambda L, R: L.sigmoid_focal_loss(None, None, alpha=2.0), ALPHA + "2.0"),
    ("focal loss_weight", lambda L, R: L.FocalLoss(loss_weight=-1.0),
     "loss_weight must be a finite number >= 0, got -1.0"),
    ("dfl reg_max 0", lambda L, R: L.DFLoss(reg_max=0), "reg_max must be an int >= 1, got 0"),
    ("dfl reg_max float", lambda L, R: L.DFLoss(reg_max=16.0), "reg_max must be an int >= 1, got 16.0"),
    ("dfl functional reg_max", lambda L, R: L.distribution_focal_loss(None, None, reg_max=-3),
     "reg_max must be an int >= 1, got -3"),
    ("ghmc bins 0", lambda L, R: L.GHMC(bins=0), "bins must be an int >= 1, got 0"),
    ("ghmc bins bool", lambda L, R: L.GHMC(bins=True), "bins must be an int >= 1, got True"),
    ("ghmc bins float", lambda L, R: L.GHMC(bins=10.0), "bins must be an int >= 1, got 10.0"),
    ("ghmc momentum 1", lambda L, R: L.GHMC(momentum=1.0), "momentum must be a finite number in [0, 1), got 1.0"),
    ("ghmc momentum negative", lambda L, R: L.GHMC(momentum=-0.1),
     "momentum must be a finite number in [0, 1), got -0.1"),
    ("ghmc momentum NaN", lambda L, R: L.GHMC(momentum=NAN), "momentum must be a finite number in [0, 1), got nan"),
    ("ghmc loss_weight NaN", lambda L, R: L.GHMC(loss_weight=NAN), "loss_weight must be a finite number >= 0, got nan"),
    ("ghmr mu 0", lambda L, R: L.GHMR(mu=0.0), "mu must be a finite number > 0, got 0.0"),
    ("ghmr mu inf", lambda L, R: L.GHMR(mu=INF), "mu must be a finite number > 0, got inf"),
    ("ghmr bins", lambda L, R: L.GHMR(bins=-1), "bins must be an int >= 1, got -1"),
    ("varifocal alpha", lambda L, R: L.VarifocalLoss(alpha=-0.75), "alpha must be a finite number >= 0, got -0.75"),
    ("varifocal gamma", lambda L, R: L.VarifocalLoss(gamma=NAN), "gamma must be a finite number >= 0, got nan"),
    ("varifocal functional gamma", lambda L, R: L.varifocal_loss(None, None, None, gamma=-2.0),
     "gamma must be a finite number >= 0, got -2.0"),
    ("giou eps", lambda L, R: L.GIoULoss(eps=-1e-10), "eps must be a finite number >= 0, got -1e-10"),
    ("giou functional eps", lambda L, R: L.giou_loss(None, None, eps=NAN), "eps must be a finite number >= 0, got nan"),
    ("smooth_l1 beta inf", lambda L, R: L.SmoothL1Loss(beta=INF), "beta must be a finite number > 0, got inf"),
    ("l1 loss_weight", lambda L, R: L.L1Loss(loss_weight=INF), "loss_weight must be a finite number >= 0, got inf"),
    ("balanced_l1 gamma NaN", lambda L, R: L.BalancedL1Loss(gamma=NAN), "gamma must be a finite number > 0, got nan"),
    ("balanced_l1 beta str", lambda L, R: L.BalancedL1Loss(beta="1"), "beta must be a finite number > 0, got '1'"),
    ("retina num_classes", lambda L, R: R.RetinaLoss(0, None), "num_classes must be an int >= 1, got 0"),
]


@pytest.mark.parametrize("label,make,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_configuration_is_refused_alike(fw, label, make, message):
    with pytest.raises(ValueError) as err:
        make(*TWINS[fw])
    assert str(err.value) == message


@pytest.mark.parametrize("make", [
    lambda L: L.FocalLoss(alpha=-1, gamma=0.0), lambda L: L.FocalLoss(alpha=0.0), lambda L: L.FocalLoss(alpha=1),
    lambda L: L.DFLoss(reg_max=1), lambda L: L.DFLoss(reg_max=np.int64(16)),
    lambda L: L.GHMC(bins=1, momentum=0), lambda L: L.GHMR(bins=np.int32(10), momentum=0.999),
    lambda L: L.VarifocalLoss(alpha=0, gamma=0), lambda L: L.GIoULoss(eps=0), lambda L: L.L1Loss(loss_weight=0),
])
def test_edge_configurations_are_accepted(fw, make):
    make(TWINS[fw][0])
