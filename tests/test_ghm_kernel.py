"""Paddle GHM-C's fused CPU kernel (paddle_impl/losses/ghm_kernel.*) against the loop definition of the bins,
float64 NumPy BCE, and the stock-op path it replaces; the fallback when it cannot be built."""
import numpy as np
import paddle
import pytest

import paddle_impl.losses as P
from align.numpy_ref import ghm as ghm_ref
from paddle_impl.losses import ghm_kernel
from tests.test_losses import _edge_neighbourhood

EPS = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps}
SUBNORMAL = {"float64": np.finfo(np.float64).smallest_subnormal, "float32": np.finfo(np.float32).smallest_subnormal}


def kernel():
    k = ghm_kernel.load()
    assert k is not None, "the GHM-C CPU kernel did not build (see the warning): GHM-C would miss its speed target"
    return k


@pytest.fixture
def stock_ops(monkeypatch):
    """Run Paddle's GHM-C on its stock-op path inside the test."""
    def switch(on):
        monkeypatch.setenv(ghm_kernel.SWITCH, "1" if on else "0")
    return switch


def run_steps(stock_ops, use_kernel, steps, dtype, **config):
    stock_ops(use_kernel)
    m = P.GHMC(**config)
    out = []
    for x, t, w in steps:
        pred = paddle.to_tensor(x.astype(dtype), stop_gradient=False)
        t, w = paddle.to_tensor(t.astype(dtype)), paddle.to_tensor(w.astype(dtype))
        bins = m.bin_index(pred, t, w).numpy()
        loss = m(pred, t, w)
        loss.backward()
        out.append((float(loss), pred.grad.numpy(), m.acc_sum.numpy().copy(), bins))
    return out


def test_kernel_builds_on_this_machine():
    assert ghm_kernel.enabled()
    assert all(hasattr(kernel(), op) for op in ghm_kernel.OPS)
    assert ghm_kernel.for_tensor(paddle.zeros([2, 2])) is kernel()
    assert ghm_kernel.status() == "fused CPU kernel"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bins", [1, 10, 30, 1000])
def test_kernel_bins_follow_the_loop_definition_at_every_edge(bins, dtype):
    """g within 3 ulps of every edge (as pred and target make it: x = 0 gives sigmoid 1/2, x = 40 gives 1,
    both exact), ignored elements included, against the loop definition on the kernel's own g."""
    kernel()
    rng = np.random.default_rng(bins)
    edges = ghm_ref.edges(bins, "ghmc")
    g = _edge_neighbourhood(edges.astype(np.float32), np.dtype(dtype).type, rng)
    low = g <= 0.5
    sig = np.where(low, 0.5, 1.0).astype(dtype)
    target = (sig - g).astype(dtype)                         # rounds: the g the kernel sees is |sig - target|
    g_seen = np.abs(sig - target)
    valid = rng.random(g.shape) > 0.2
    expected = ghm_ref.assign_bins(g_seen.astype(np.float64), valid, edges)
    pred = np.where(low, 0.0, 40.0).astype(dtype)
    got = P.GHMC(bins=bins).bin_index(*(paddle.to_tensor(a[:, None]) for a in
                                        (pred, target, valid.astype(dtype)))).numpy()[:, 0]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", [{"bins": 10}, {"bins": 30, "momentum": 0.75}])
def test_kernel_equals_the_stock_path(stock_ops, dtype, config):
    """Three consecutive calls (momentum state carried): same bins, acc_sum, loss and gradient."""
    kernel()
    rng = np.random.default_rng(7)
    steps = [(rng.normal(0, 4, (n, 9)), (rng.random((n, 9)) < 0.3) * 1.0, (rng.random((n, 9)) > 0.1) * 1.0)
             for n in (300, 120, 40)]
    steps[0][0][:5, 0] = [30.0, -30.0, 40.0, -40.0, 0.0]
    fused, stock = (run_steps(stock_ops, on, steps, dtype, **config) for on in (True, False))
    rtol = 1e-13 if dtype == "float64" else 4e-6
    for (lf, gf, af, bf), (ls, gs, as_, bs) in zip(fused, stock):
        np.testing.assert_array_equal(bf, bs)
        np.testing.assert_array_equal(af, as_)
        assert lf == pytest.approx(ls, rel=rtol)
        np.testing.assert_allclose(gf, gs, rtol=0, atol=rtol * np.abs(gs).max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kernel_bce_and_gradient_keep_relative_accuracy(dtype):
    """Elementwise (one weight of 1 per call): BCE against float64 NumPy log1p(exp(-|x|)) + (relu(x) - x t),
    relative to a few ulps even where it is 1e-39 small (confident logits; float32 subnormals keep an absolute
    ulp), and sigmoid(x) - t."""
    k = kernel()
    x = np.array([0.0, 1e-3, -1e-3, 0.5, -2.0, 8.0, -15.0, 17.0, 30.0, -30.0, 40.0, -40.0, 90.0, -90.0])
    table = paddle.to_tensor(np.ones(1, dtype))
    for t in (0.0, 1.0, 0.3):
        xs = x.astype(dtype)
        ref_x = xs.astype(np.float64)
        bce = np.log1p(np.exp(-np.abs(ref_x))) + (np.maximum(ref_x, 0) - ref_x * t)     # no cancellation
        for xi, want in zip(xs, bce):
            px, pt = paddle.to_tensor(np.array([xi])), paddle.to_tensor(np.array([t], dtype))
            loss, grad = k.ghm_harmonized_bce(px, pt, paddle.zeros([1], "int32"), table)
            assert abs(float(loss) - want) <= 4 * EPS[dtype] * want + SUBNORMAL[dtype], (xi, t, float(loss), want)
            sig = 1 / (1 + np.exp(-np.float64(xi)))
            assert abs(float(grad[0]) - (sig - t)) <= 2 * EPS[dtype] * max(abs(sig - t), sig) + SUBNORMAL[dtype], (xi, t)


def test_kernel_names_mismatched_inputs():
    k = kernel()
    a, b = paddle.zeros([4, 3]), paddle.zeros([4, 2])
    upper = paddle.ones([20])
    with pytest.raises(Exception, match="target must have pred's shape"):
        k.ghm_slots(a, b, a, upper, 10)
    with pytest.raises(Exception, match="slot must be int32"):
        k.ghm_harmonized_bce(a, a, a, paddle.ones([11]))


def test_stock_path_serves_when_the_build_fails(monkeypatch, stock_ops):
    """A failed build (or a module without the ops) warns, names why, and GHM-C computes the same loss on
    stock ops."""
    from paddle.utils import cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("no C++ compiler")

    rng = np.random.default_rng(1)
    step = [(rng.normal(0, 3, (50, 4)), (rng.random((50, 4)) < 0.3) * 1.0, np.ones((50, 4)))]
    expected = run_steps(stock_ops, False, step, "float64")[0]
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with pytest.warns(UserWarning, match="could not be built .*no C\\+\\+ compiler"):
        failed = ghm_kernel.build()
    assert failed is None
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: object())     # "built", but without the ops
    with pytest.warns(UserWarning, match="lacks \\['ghm_slots', 'ghm_harmonized_bce'\\]"):
        assert ghm_kernel.build() is None
    monkeypatch.setitem(ghm_kernel._loaded, "module", failed)    # this process's load() as if it had failed
    stock_ops(True)
    assert ghm_kernel.for_tensor(paddle.zeros([1])) is None
    assert ghm_kernel.status() == "stock ops (the kernel could not be built)"
    got = run_steps(stock_ops, True, step, "float64")[0]
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])


def test_switch_turns_the_kernel_off(stock_ops):
    stock_ops(True)
    with ghm_kernel.disabled():                                  # the context the benchmark uses
        assert ghm_kernel.for_tensor(paddle.zeros([1])) is None
    assert ghm_kernel.for_tensor(paddle.zeros([1])) is kernel()  # and restored after it
    stock_ops(False)
    assert ghm_kernel.for_tensor(paddle.zeros([1])) is None
    assert ghm_kernel.status().startswith("stock ops (PADDLE_IMPL_CPU_KERNELS=0")
