"""Loss twins against independent expectations: torchvision.ops, closed forms, mmdetection's GHM loop, and
the NumPy references' analytic gradients against finite differences. (Every loss x case x dtype through
loss_diff is in tests/test_loss_diff.py; bad inputs in tests/test_loss_checks.py.)"""
import math

import numpy as np
import paddle
import pytest
import torch
import torchvision.ops

import paddle_impl.losses as P
import torch_ref.losses as T
from align import numpy_ref
from align.numpy_ref import ghm as ghm_ref
from benchmarks.bench_losses import torch_ghmc_loop

DTYPES = ("float64", "float32")
RTOL = {"float64": 1e-12, "float32": 2e-6}
DFL_TARGET = np.array([[0.3, 15.5], [7.0, 2.25], [11.9, 0.0]])


def tt(a, dtype="float64", grad=True):
    return torch.tensor(np.asarray(a, dtype=dtype), requires_grad=grad)


def pt(a, dtype="float64", grad=True):
    return paddle.to_tensor(np.asarray(a, dtype=dtype), stop_gradient=not grad)


def close(a, b, dtype, scale=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b)) if scale is None else scale
    assert a.shape == b.shape
    assert np.max(np.abs(a - b), initial=0.0) <= RTOL[dtype] * max(scale, 1e-30), (a, b)


# ---------------------------------------------------------------- torchvision peers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_matches_torchvision(dtype, reduction):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 4, (64, 5))
    x[0, :3] = [0.0, 30.0, -30.0]
    t = (rng.random((64, 5)) < 0.2).astype(np.float64)
    ref_in = tt(x, dtype)
    ref = torchvision.ops.sigmoid_focal_loss(ref_in, tt(t, dtype, False), 0.25, 2.0, reduction)
    ref.sum().backward()
    ours_t, ours_p = tt(x, dtype), pt(x, dtype)
    lt = T.sigmoid_focal_loss(ours_t, tt(t, dtype, False), reduction=reduction)
    lp = P.sigmoid_focal_loss(ours_p, pt(t, dtype, False), reduction=reduction)
    lt.sum().backward()
    lp.sum().backward()
    for value, grad in ((lt.detach().numpy(), ours_t.grad.numpy()), (lp.numpy(), ours_p.grad.numpy())):
        close(value, ref.detach().numpy(), dtype)
        close(grad, ref_in.grad.numpy(), dtype)


def test_focal_weight_is_elementwise_factor():
    rng = np.random.default_rng(1)
    x, w = rng.normal(0, 3, (20, 4)), rng.random((20, 1))
    t = (rng.random((20, 4)) < 0.3).astype(np.float64)
    ref = torchvision.ops.sigmoid_focal_loss(tt(x, grad=False), tt(t, grad=False), reduction="none")
    expected = float((ref.numpy() * w).sum())
    assert T.sigmoid_focal_loss(tt(x), tt(t, grad=False), tt(w)).item() == pytest.approx(expected, rel=1e-13)
    assert float(P.sigmoid_focal_loss(pt(x), pt(t, grad=False), pt(w))) == pytest.approx(expected, rel=1e-13)


def _boxes(rng, n):
    xy = rng.random((n, 2)) * 50
    b = np.concatenate([xy, xy + rng.random((n, 2)) * 40 + 1], 1)
    p = b + rng.normal(0, 6, (n, 4))
    p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 0.5)
    return p, b


@pytest.mark.parametrize("dtype", DTYPES)
def test_giou_matches_torchvision(dtype):
    p, b = _boxes(np.random.default_rng(2), 50)
    ref_in = tt(p, dtype)
    ref = torchvision.ops.generalized_box_iou_loss(ref_in, tt(b, dtype, False), reduction="none", eps=1e-10)
    ref.sum().backward()
    ours_t, ours_p = tt(p, dtype), pt(p, dtype)
    lt, lp = T.giou_loss(ours_t, tt(b, dtype, False)), P.giou_loss(ours_p, pt(b, dtype, False))
    lt.sum().backward()
    lp.sum().backward()
    for value, grad in ((lt.detach().numpy(), ours_t.grad.numpy()), (lp.numpy(), ours_p.grad.numpy())):
        close(value, ref.detach().numpy(), dtype)
        close(grad, ref_in.grad.numpy(), dtype)


# ---------------------------------------------------------------- closed forms
def test_closed_forms():
    ln2 = math.log(2.0)
    # focal at logit 0: ce = ln 2, p_t = 1/2 -> alpha_t ln2 / 4
    assert T.sigmoid_focal_loss(tt([[0.0, 0.0]]), tt([[1.0, 0.0]], grad=False)).item() == pytest.approx(
        0.25 * ln2 / 4 + 0.75 * ln2 / 4, rel=1e-15)
    # smooth L1 / L1
    d = [[0.5, -2.0, 1.0, 0.0]]
    assert T.smooth_l1_loss(tt(d), tt(np.zeros((1, 4)))).item() == pytest.approx(0.125 + 1.5 + 0.5, rel=1e-15)
    assert float(P.l1_loss(pt(d), pt(np.zeros((1, 4))))) == pytest.approx(3.5, rel=1e-15)
    # GIoU: identical boxes -> 1 - 4 / (4 + eps); disjoint boxes far apart -> close to 2
    box = [[0.0, 0.0, 2.0, 2.0]]
    assert float(P.giou_loss(pt(box), pt(box))[0]) == pytest.approx(1 - 4 / (4 + 1e-10), rel=1e-5)
    far = T.giou_loss(tt(box), tt([[1e4, 1e4, 1e4 + 2, 1e4 + 2]]))[0].item()
    assert far == pytest.approx(2.0 - 8.0 / (1e4 + 2) ** 2, rel=1e-12)
    # DFL on uniform logits: -log(1/17) whatever the target
    uni = np.zeros((3, 4, 17))
    out = T.distribution_focal_loss(tt(uni), tt(np.full((3, 4), 5.25), grad=False)).detach().numpy()
    np.testing.assert_allclose(out, np.full((3, 1), math.log(17.0)), rtol=1e-14)
    # varifocal: floored logs give 100 per wrong saturated element
    p, q, lab = [[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 1.0]]
    assert (float(P.varifocal_loss(pt(p), pt(q, grad=False), pt(lab, grad=False)))
            == pytest.approx(0.75 * 100 + 100, rel=1e-12))


def test_balanced_l1_is_continuous_and_smooth_at_beta():
    b = math.e ** 3 - 1
    for beta in (1.0, 0.5):
        below, above = beta * (1 - 1e-12), beta
        vals = [T.balanced_l1_loss(tt([[x]]), tt([[0.0]]), beta=beta).item() for x in (below, above)]
        assert vals[0] == pytest.approx(vals[1], abs=1e-9)
    x = tt([[0.999999]])                                        # beta 1: slope alpha ln(b|d| + 1) -> gamma
    T.balanced_l1_loss(x, tt([[0.0]])).backward()
    assert x.grad.item() == pytest.approx(0.5 * math.log(b * 0.999999 + 1), rel=1e-12)
    assert x.grad.item() == pytest.approx(1.5, rel=1e-6)           # alpha ln(b + 1) = gamma: no kink at beta
    assert T.balanced_l1_loss(tt(np.zeros((0, 4))), tt(np.zeros((0, 4))), reduction="mean").item() == 0.0


def test_bce_with_logits_gradient_at_zero():
    """Paddle 3.3.1's binary_cross_entropy_with_logits gives sigmoid(0) - t - 1 at exactly 0; ours does not."""
    x_t, x_p = tt([0.0, 0.0, 0.0]), pt([0.0, 0.0, 0.0])
    t = [0.0, 0.5, 1.0]
    T.sigmoid_focal_loss(x_t[None], tt([t], grad=False), alpha=-1, gamma=0.0).backward()
    P.sigmoid_focal_loss(x_p.unsqueeze(0), pt([t], grad=False), alpha=-1, gamma=0.0).backward()
    np.testing.assert_allclose(x_t.grad.numpy(), [0.5, 0.0, -0.5], atol=1e-16)
    np.testing.assert_allclose(x_p.grad.numpy(), [0.5, 0.0, -0.5], atol=1e-16)


# ---------------------------------------------------------------- GHM
def test_ghm_edges_are_mmdetection_float32():
    e = np.arange(31, dtype=np.float32) / np.float32(30)
    e[-1] += np.float32(1e-6)
    assert np.array_equal(T.GHMC(bins=30).edges.numpy(), e)
    assert np.array_equal(P.GHMC(bins=30).edges.numpy(), e)
    r = np.arange(11, dtype=np.float32) / np.float32(10)
    r[-1] = 1e3
    assert np.array_equal(T.GHMR().edges.numpy(), r) and np.array_equal(P.GHMR().edges.numpy(), r)
    assert np.array_equal(ghm_ref.edges(30, "ghmc"), e.astype(np.float64))


def _edge_neighbourhood(edges32, dtype, rng):
    """Every edge and its 3 neighbours on each side in `dtype`, g = 0 and 1, and uniform draws, within [0, 1]."""
    e = edges32.astype(dtype)
    near = [e]
    up, down = e.copy(), e.copy()
    for _ in range(3):
        up, down = np.nextafter(up, dtype(2)), np.nextafter(down, dtype(-1))
        near += [up, down]
    g = np.concatenate(near + [np.array([0.0, 1.0], dtype), rng.random(2000).astype(dtype)])
    return g[(g >= 0) & (g <= 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bins", [1, 3, 7, 10, 30, 100, 1000])
def test_ghm_bin_index_is_exact_at_every_edge(bins, dtype):
    """The search-free bin_index against the loop definition, on g within 3 ulps of every float32 edge."""
    rng = np.random.default_rng(bins)
    for kind in ("ghmc", "ghmr"):
        edges = ghm_ref.edges(bins, kind)
        g = _edge_neighbourhood(edges.astype(np.float32), dtype, rng)
        valid = rng.random(g.shape) > 0.2
        expected = ghm_ref.assign_bins(g.astype(np.float64), valid, edges)
        upper_t = T.ghm.upper_edges(torch.tensor(edges, dtype=torch.float32))
        upper_p = P.ghm.upper_edges(paddle.to_tensor(edges.astype(np.float32)))
        got_t = T.ghm.bin_index(torch.tensor(g), upper_t, bins, torch.tensor(valid)).numpy()
        got_p = P.ghm.bin_index(paddle.to_tensor(g), upper_p, bins, paddle.to_tensor(valid)).numpy()
        np.testing.assert_array_equal(got_t, expected, err_msg=f"torch {kind}")
        np.testing.assert_array_equal(got_p, expected, err_msg=f"paddle {kind}")


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghmc_vectorised_equals_mmdetection_loop(momentum):
    rng = np.random.default_rng(3)
    mt, mp = T.GHMC(bins=30, momentum=momentum), P.GHMC(bins=30, momentum=momentum)
    acc = torch.zeros(30, dtype=torch.float64)
    for n in (400, 100, 30):                                   # consecutive calls share the state
        x = rng.normal(0, 3, (n, 6))
        t = (rng.random((n, 6)) < 0.3).astype(np.float64)
        w = (rng.random((n, 6)) > 0.1).astype(np.float64)
        ref = torch_ghmc_loop(tt(x, grad=False), tt(t, grad=False), tt(w, grad=False), 30, momentum, acc).item()
        assert mt(tt(x), tt(t, grad=False), tt(w, grad=False)).item() == pytest.approx(ref, rel=1e-13)
        assert float(mp(pt(x), pt(t, grad=False), pt(w, grad=False))) == pytest.approx(ref, rel=1e-13)
        if momentum:
            np.testing.assert_allclose(mt.acc_sum.numpy(), acc.numpy(), rtol=1e-15)
            np.testing.assert_allclose(mp.acc_sum.numpy(), acc.numpy(), rtol=1e-15)


def test_ghm_state_dict_and_first_call_inflation():
    """acc_sum is in the state_dict of both twins; one bin, first call: weight tot / ((1 - m) tot) = 1/(1-m)."""
    for lib in (T, P):
        m = lib.GHMC(bins=10, momentum=0.75)
        assert list(m.state_dict()) == ["acc_sum"]
        assert list(lib.GHMR(momentum=0.7).state_dict()) == ["acc_sum"]
    x = np.zeros((8, 1))                                       # g = 1/2 for every element: bin 5
    t = np.array([[0.0], [1.0]] * 4)
    ce = math.log(2.0)
    mt, mp = T.GHMC(bins=10, momentum=0.75), P.GHMC(bins=10, momentum=0.75)
    assert (mt(tt(x), tt(t, grad=False), tt(np.ones((8, 1)), grad=False)).item()
            == pytest.approx(8 * ce / 8 / 0.25, rel=1e-12))
    assert (float(mp(pt(x), pt(t, grad=False), pt(np.ones((8, 1)), grad=False)))
            == pytest.approx(8 * ce / 8 / 0.25, rel=1e-12))
    assert mt.acc_sum[5].item() == 2.0 and float(mp.acc_sum[5]) == 2.0
    # everything ignored: loss 0, the state keeps its values
    assert mt(tt(x), tt(t, grad=False), tt(np.zeros((8, 1)), grad=False)).item() == 0.0
    assert mt.acc_sum[5].item() == 2.0
    state = {"acc_sum": torch.arange(10, dtype=torch.float64)}
    fresh = T.GHMC(bins=10, momentum=0.75).double()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.acc_sum, state["acc_sum"])
    pfresh = P.GHMC(bins=10, momentum=0.75)
    pfresh.set_state_dict({"acc_sum": paddle.arange(10, dtype="float32")})
    np.testing.assert_array_equal(pfresh.acc_sum.numpy(), np.arange(10))


def test_ghmc_integer_labels_expand_to_one_hot():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 2, (6, 3))
    labels = np.array([0, 2, 3, -1, 1, 3])                     # 3 and -1 are background
    onehot = np.zeros((6, 3))
    onehot[[0, 1, 4], [0, 2, 1]] = 1.0
    lw = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    for lib, mk in ((T, tt), (P, pt)):
        a = lib.GHMC()(mk(x), mk(labels, "int64", False), mk(lw, grad=False))
        b = lib.GHMC()(mk(x), mk(onehot, grad=False), mk(np.repeat(lw[:, None], 3, 1), grad=False))
        assert float(a.detach()) == float(b.detach())


def test_ghmr_matches_mmdetection_closed_form():
    """Two elements in different bins, no momentum: weights tot/1/2 each, loss = sum(asl1 * w)/tot."""
    mu = 0.02
    d = np.array([[0.0, 0.5]])
    asl1 = np.sqrt(d ** 2 + mu ** 2) - mu
    expected = float((asl1 * (2.0 / 1 / 2)).sum() / 2.0)
    assert (T.GHMR()(tt(d), tt(np.zeros((1, 2))), tt(np.ones((1, 2)), grad=False)).item()
            == pytest.approx(expected, rel=1e-12))
    assert (float(P.GHMR()(pt(d), pt(np.zeros((1, 2))), pt(np.ones((1, 2)), grad=False)))
            == pytest.approx(expected, rel=1e-12))


# ---------------------------------------------------------------- NumPy analytic gradients
def _fd_check(fn, inputs, wrt, eps=1e-6, rtol=1e-6):
    """Central finite differences of sum(fn(**inputs)) against its analytic gradient."""
    _, grads = fn(**inputs)
    for name in wrt:
        x = inputs[name]
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            hi, lo = x.copy(), x.copy()
            hi[idx] += eps
            lo[idx] -= eps
            vh = np.sum(fn(**{**inputs, name: hi})[0])
            vl = np.sum(fn(**{**inputs, name: lo})[0])
            num[idx] = (vh - vl) / (2 * eps)
        np.testing.assert_allclose(grads[name], num, rtol=rtol, atol=rtol * np.max(np.abs(num)), err_msg=name)


def test_numpy_reference_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, (5, 3))
    t = (rng.random((5, 3)) < 0.4).astype(np.float64)
    w = rng.random((5, 1)) + 0.1
    _fd_check(lambda pred, weight: numpy_ref.sigmoid_focal_loss(pred, t, weight, reduction="mean"),
              {"pred": x, "weight": w}, ("pred", "weight"))
    d = rng.normal(0, 1.5, (4, 4))
    z = rng.normal(0, 0.1, (4, 4))
    for fn in (lambda pred, target, weight: numpy_ref.smooth_l1_loss(pred, target, 0.7, weight),
               lambda pred, target, weight: numpy_ref.l1_loss(pred, target, weight, "mean"),
               lambda pred, target, weight: numpy_ref.balanced_l1_loss(pred, target, weight=weight)):
        _fd_check(fn, {"pred": d, "target": z, "weight": rng.random((1, 4))}, ("pred", "target", "weight"))
    p = 1 / (1 + np.exp(-rng.normal(0, 2, (5, 3))))
    _fd_check(lambda pred_score: numpy_ref.varifocal_loss(pred_score, t * 0.7, t), {"pred_score": p}, ("pred_score",))
    pb, tb = _boxes(rng, 6)
    _fd_check(lambda pred, target, weight: numpy_ref.giou_loss(pred, target, weight=weight, reduction="sum"),
              {"pred": pb, "target": tb, "weight": rng.random(6)}, ("pred", "target", "weight"), eps=1e-5)
    _fd_check(lambda pred_dist, weight: numpy_ref.distribution_focal_loss(pred_dist, DFL_TARGET, weight=weight),
              {"pred_dist": rng.normal(0, 2, (3, 2, 17)), "weight": rng.random((3, 1))}, ("pred_dist", "weight"))
    ref = ghm_ref.GHMCRef(bins=10)
    _fd_check(lambda pred: ref(pred, t, np.ones_like(t))[:2], {"pred": x}, ("pred",))
    rref = ghm_ref.GHMRRef()
    _fd_check(lambda pred, target: rref(pred, target, np.ones_like(d))[:2], {"pred": d * 0.05, "target": z * 0.1},
              ("pred", "target"))

