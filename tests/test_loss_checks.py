"""Bad input raises the same ValueError, naming the argument, in both twins."""
import numpy as np
import paddle
import pytest
import torch

import paddle_impl.losses as P
import torch_ref.losses as T


def _tensor(fw, a):
    a = np.asarray(a)
    return torch.tensor(a) if fw == "torch" else paddle.to_tensor(a)


def _valid(rng):
    boxes = np.concatenate([rng.random((4, 2)), rng.random((4, 2)) + 2], 1)
    return {
        "focal": (lambda lib, **k: lib.sigmoid_focal_loss(**k),
                  {"pred": rng.normal(size=(4, 3)), "target": np.eye(4, 3), "weight": np.ones((4, 1))}),
        "ghmc": (lambda lib, **k: lib.GHMC()(**k),
                 {"pred": rng.normal(size=(4, 3)), "target": np.eye(4, 3), "label_weight": np.ones((4, 3))}),
        "ghmc_labels": (lambda lib, **k: lib.GHMC()(**k),
                        {"pred": rng.normal(size=(4, 3)), "target": np.array([0, 1, 3, 2]),
                         "label_weight": np.ones(4)}),
        "ghmr": (lambda lib, **k: lib.GHMR()(**k),
                 {"pred": rng.normal(size=(4, 4)), "target": rng.normal(size=(4, 4)), "label_weight": np.ones((4, 4))}),
        "smooth_l1": (lambda lib, **k: lib.smooth_l1_loss(**k),
                      {"pred": rng.normal(size=(4, 4)), "target": rng.normal(size=(4, 4)), "weight": np.ones((4, 4))}),
        "l1": (lambda lib, **k: lib.l1_loss(**k),
               {"pred": rng.normal(size=(4, 4)), "target": rng.normal(size=(4, 4)), "weight": np.ones((4, 4))}),
        "balanced_l1": (lambda lib, **k: lib.balanced_l1_loss(**k),
                        {"pred": rng.normal(size=(4, 4)), "target": rng.normal(size=(4, 4)),
                         "weight": np.ones((4, 4))}),
        "varifocal": (lambda lib, **k: lib.varifocal_loss(**k),
                      {"pred_score": rng.random((4, 3)), "gt_score": np.eye(4, 3) * 0.5, "label": np.eye(4, 3)}),
        "giou": (lambda lib, **k: lib.giou_loss(**k),
                 {"pred": boxes, "target": boxes + 0.1, "weight": np.ones(4)}),
        "dfl": (lambda lib, **k: lib.distribution_focal_loss(**k),
                {"pred_dist": rng.normal(size=(4, 4, 17)), "target": rng.random((4, 4)) * 15,
                 "weight": np.ones((4, 1))}),
    }


def _set(inputs, name, fn):
    out = dict(inputs)
    out[name] = fn(np.array(inputs[name]))
    return out


def _poison(value):
    def fn(a):
        a = a.astype(np.float64)
        a.flat[0] = value
        return a
    return fn


def _mutations(loss, inputs):
    """(label, bad inputs, argument the message must name)."""
    first = next(iter(inputs))
    floats = [k for k, v in inputs.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
    out = []
    for name in floats:
        out.append((f"nan {name}", _set(inputs, name, _poison(np.nan)), name))
        out.append((f"inf {name}", _set(inputs, name, _poison(np.inf)), name))
    second = [k for k in floats if k != first][0]
    out.append(("shape mismatch", _set(inputs, second, lambda a: a[..., :-1] if a.ndim > 1 else a[:-1]), second))
    out.append(("integer prediction", _set(inputs, first, lambda a: a.astype(np.int64)), first))
    out.append(("mixed dtypes", _set(inputs, second, lambda a: a.astype(np.float32)), second))
    for name in ("weight", "label_weight"):
        if name in inputs:
            out.append((f"negative {name}", _set(inputs, name, _poison(-1.0)), name))
    return out


EXTRA = {
    "varifocal": [("probability > 1", "pred_score", lambda a: a + 1.0)],
    "dfl": [("target >= reg_max", "target", lambda a: a * 0 + 16.0), ("negative target", "target", lambda a: -a - 0.5),
            ("reg_max mismatch", "pred_dist", lambda a: a[..., :16])],
    "giou": [("not boxes", "pred", lambda a: a[:, :3])],
    "ghmc": [("target outside [0, 1]", "target", lambda a: a * 2)],
    "ghmc_labels": [("float label weight dims", "label_weight", lambda a: np.ones((4, 2))),
                    ("labels of wrong length", "target", lambda a: a[:3])],
}


def _all_cases():
    cases = []
    for loss, (_, inputs) in _valid(np.random.default_rng(0)).items():
        for label, bad, arg in _mutations(loss, inputs):
            cases.append((loss, label, bad, arg))
        for label, name, fn in EXTRA.get(loss, []):
            cases.append((loss, label, _set(inputs, name, fn), name))
    return cases


@pytest.mark.parametrize("loss,label,bad,arg", _all_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_raises_same_value_error(loss, label, bad, arg):
    call = _valid(np.random.default_rng(0))[loss][0]
    messages = []
    for fw, lib in (("torch", T), ("paddle", P)):
        with pytest.raises(ValueError) as err:
            call(lib, **{k: _tensor(fw, v) for k, v in bad.items()})
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(arg) or f" {arg}" in messages[0], messages[0]


def test_valid_inputs_pass():
    for loss, (call, inputs) in _valid(np.random.default_rng(0)).items():
        for fw, lib in (("torch", T), ("paddle", P)):
            out = call(lib, **{k: _tensor(fw, v) for k, v in inputs.items()})
            assert np.all(np.isfinite(np.asarray(out.detach().numpy() if fw == "torch" else out.numpy()))), loss


@pytest.mark.parametrize("make", [
    lambda lib: lib.GHMC(bins=0), lambda lib: lib.GHMC(momentum=1.0), lambda lib: lib.GHMC(use_sigmoid=False),
    lambda lib: lib.GHMR(mu=0.0), lambda lib: lib.SmoothL1Loss(beta=0.0), lambda lib: lib.FocalLoss(reduction="avg"),
    lambda lib: lib.BalancedL1Loss(alpha=-1.0), lambda lib: lib.GIoULoss(reduction="max"),
])
def test_bad_configuration_raises_value_error(make):
    messages = []
    for lib in (T, P):
        with pytest.raises(ValueError) as err:
            make(lib)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("fw", ["torch", "paddle"])
def test_finiteness_check_survives_an_overflowing_sum(fw):
    """The fast path sums the tensor; finite values whose float32 sum overflows must still pass."""
    checks = T.checks if fw == "torch" else P.checks
    big = np.full(4, 3e38, np.float32)
    checks.check_float("pred", _tensor(fw, big))
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(ValueError, match="pred contains NaN or Inf"):
            checks.check_float("pred", _tensor(fw, np.append(big, np.float32(bad))))
