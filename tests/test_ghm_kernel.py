"""GHM-C's fused CPU kernels, both twins (*/losses/ghm_kernel.*), against the loop definition of the bins,
float64 NumPy BCE, and the stock-op path they replace; the fallback when they cannot be built."""
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
import torch

import paddle_impl.losses as P
import torch_ref.losses as T
from align.numpy_ref import ghm as ghm_ref
from paddle_impl.losses import ghm_kernel as paddle_kernel
from tests.test_losses import _edge_neighbourhood
from torch_ref.losses import ghm_kernel as torch_kernel

EPS = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps}
SUBNORMAL = {"float64": np.finfo(np.float64).smallest_subnormal, "float32": np.finfo(np.float32).smallest_subnormal}


def _torch_cpp_extension():
    from torch.utils import cpp_extension
    return cpp_extension


def _paddle_cpp_extension():
    from paddle.utils import cpp_extension
    return cpp_extension


FRAMEWORKS = {
    "torch": SimpleNamespace(
        losses=T, kernel=torch_kernel, cpp_extension=_torch_cpp_extension,
        tensor=lambda a, grad=False: torch.tensor(a, requires_grad=grad),
        numpy=lambda t: t.detach().numpy(), grad=lambda t: t.grad.numpy()),
    "paddle": SimpleNamespace(
        losses=P, kernel=paddle_kernel, cpp_extension=_paddle_cpp_extension,
        tensor=lambda a, grad=False: paddle.to_tensor(a, stop_gradient=not grad),
        numpy=lambda t: t.numpy(), grad=lambda t: t.grad.numpy()),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def fw(request):
    return FRAMEWORKS[request.param]


def ops(fw):
    k = fw.kernel.load()
    assert k is not None, "the GHM-C CPU kernel did not build (see the warning): GHM-C would miss its speed target"
    return k


@pytest.fixture
def stock_ops(monkeypatch):
    """Switch the kernels of both frameworks on or off inside the test."""
    def switch(on):
        for f in FRAMEWORKS.values():
            monkeypatch.setenv(f.kernel.SWITCH, "1" if on else "0")
    return switch


def run_steps(fw, stock_ops, use_kernel, steps, dtype, **config):
    stock_ops(use_kernel)
    m = fw.losses.GHMC(**config)
    out = []
    for x, t, w in steps:
        pred = fw.tensor(x.astype(dtype), grad=True)
        t, w = fw.tensor(t.astype(dtype)), fw.tensor(w.astype(dtype))
        bins = fw.numpy(m.bin_index(pred, t, w))
        loss = m(pred, t, w)
        loss.backward()
        out.append((float(fw.numpy(loss)), fw.grad(pred), fw.numpy(m.acc_sum).copy(), bins))
    return out


def test_kernels_build_on_this_machine(fw):
    assert fw.kernel.enabled()
    assert all(hasattr(ops(fw), op) for op in fw.kernel.OPS)
    assert fw.kernel.for_tensor(fw.tensor(np.zeros((2, 2)))) is ops(fw)
    assert fw.kernel.status() == "fused CPU kernel"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bins", [1, 10, 30, 1000])
def test_kernel_bins_follow_the_loop_definition_at_every_edge(fw, bins, dtype):
    """g within 3 ulps of every edge (as pred and target make it: x = 0 gives sigmoid 1/2, x = 40 gives 1,
    both exact), ignored elements included, against the loop definition on the kernel's own g: the slots
    (bin_index), the counts, and the weights the BCE pass gives each element (a different weight per bin)."""
    k = ops(fw)
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
    args = [fw.tensor(a[:, None]) for a in (pred, target, valid.astype(dtype))]
    m = fw.losses.GHMC(bins=bins)
    np.testing.assert_array_equal(fw.numpy(m.bin_index(*args))[:, 0], expected)
    upper = fw.tensor(fw.numpy(m.upper).astype(dtype))
    counts = fw.numpy(k.ghm_counts(*args, upper, bins))
    np.testing.assert_array_equal(counts, np.bincount(expected, minlength=bins + 1)[:bins])
    table = np.append(np.arange(1, bins + 1), 0).astype(dtype)    # weight k + 1 for bin k, 0 for "no bin"
    _, grad = k.ghm_harmonized_bce(*args, upper, fw.tensor(table), bins)
    np.testing.assert_array_equal(fw.numpy(grad)[:, 0], (sig - target) * table[expected])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", [{"bins": 10}, {"bins": 30, "momentum": 0.75}])
def test_kernel_equals_the_stock_path(fw, stock_ops, dtype, config):
    """Three consecutive calls (momentum state carried): same bins, acc_sum, loss and gradient. 70001 x 9
    elements in the first call: the loss sums over many blocks and threads."""
    ops(fw)
    rng = np.random.default_rng(7)
    steps = [(rng.normal(0, 4, (n, 9)), (rng.random((n, 9)) < 0.3) * 1.0, (rng.random((n, 9)) > 0.1) * 1.0)
             for n in (70001, 120, 3)]
    steps[0][0][:5, 0] = [30.0, -30.0, 40.0, -40.0, 0.0]
    fused, stock = (run_steps(fw, stock_ops, on, steps, dtype, **config) for on in (True, False))
    rtol = 1e-13 if dtype == "float64" else 4e-6
    for (lf, gf, af, bf), (ls, gs, as_, bs) in zip(fused, stock):
        np.testing.assert_array_equal(bf, bs)       # no g of these draws sits within an ulp of an edge
        np.testing.assert_array_equal(af, as_)
        assert lf == pytest.approx(ls, rel=rtol)
        np.testing.assert_allclose(gf, gs, rtol=0, atol=rtol * np.abs(gs).max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kernel_bce_and_gradient_keep_relative_accuracy(fw, dtype):
    """Elementwise (one weight of 1 per call): BCE against float64 NumPy log1p(exp(-|x|)) + (relu(x) - x t),
    relative to a few ulps even where it is 1e-39 small (confident logits; float32 subnormals keep an absolute
    ulp), and sigmoid(x) - t."""
    k = ops(fw)
    x = np.array([0.0, 1e-3, -1e-3, 0.5, -2.0, 8.0, -15.0, 17.0, 30.0, -30.0, 40.0, -40.0, 90.0, -90.0])
    upper = fw.tensor(fw.numpy(fw.losses.GHMC(bins=1).upper).astype(dtype))
    table, one = fw.tensor(np.array([1.0, 0.0], dtype)), fw.tensor(np.ones(1, dtype))
    for t in (0.0, 1.0, 0.3):
        xs = x.astype(dtype)
        ref_x = xs.astype(np.float64)
        bce = np.log1p(np.exp(-np.abs(ref_x))) + (np.maximum(ref_x, 0) - ref_x * t)     # no cancellation
        for xi, want in zip(xs, bce):
            px, pt = fw.tensor(np.array([xi])), fw.tensor(np.array([t], dtype))
            loss, grad = k.ghm_harmonized_bce(px, pt, one, upper, table, 1)
            assert abs(float(loss) - want) <= 4 * EPS[dtype] * want + SUBNORMAL[dtype], (xi, t, float(loss), want)
            sig = 1 / (1 + np.exp(-np.float64(xi)))
            got = float(fw.numpy(grad)[0])
            assert abs(got - (sig - t)) <= 2 * EPS[dtype] * max(abs(sig - t), sig) + SUBNORMAL[dtype], (xi, t)


def test_kernel_names_mismatched_inputs(fw):
    k = ops(fw)
    a, b = fw.tensor(np.zeros((4, 3), "float32")), fw.tensor(np.zeros((4, 2), "float32"))
    upper = fw.tensor(np.ones(20, "float32"))
    with pytest.raises(Exception, match="target must have pred's shape"):
        k.ghm_slots(a, b, a, upper, 10)
    with pytest.raises(Exception, match="label_weight must have pred's shape"):
        k.ghm_counts(a, a, b, upper, 10)
    with pytest.raises(Exception, match="must have pred's dtype"):
        k.ghm_counts(a, a, fw.tensor(np.zeros((4, 3))), upper, 10)
    with pytest.raises(Exception, match="upper must hold at least `bins` edges"):
        k.ghm_counts(a, a, a, upper, 30)
    with pytest.raises(Exception, match="table must hold bins \\+ 1 weights"):
        k.ghm_harmonized_bce(a, a, a, upper, fw.tensor(np.ones(10, "float32")), 10)


def test_a_build_leaves_the_build_name_unchanged(fw, monkeypatch):
    """torch's cpp_extension.load appends its own flags to the extra_ldflags list it is given; handing it our
    module-level list changed build_name() for the rest of the process (a second build would go elsewhere)."""
    before = fw.kernel.build_name()

    def load(**kwargs):                      # what torch's load does to its arguments, then "built" without ops
        for key in ("extra_ldflags", "extra_cflags", "extra_cxx_cflags"):
            if key in kwargs:
                kwargs[key] += ["-lappended_by_load"]
        return object()
    monkeypatch.setattr(fw.cpp_extension(), "load", load)
    if fw.kernel is torch_kernel:
        monkeypatch.setattr(torch_kernel, "NAMESPACE", "torch_ref_ghm_never_registered")
    with pytest.warns(UserWarning):
        fw.kernel.build()
    assert fw.kernel.build_name() == before


def test_stock_path_serves_when_the_build_fails(fw, monkeypatch, stock_ops):
    """A failed build (or a library without the ops) warns, names why, and GHM-C computes the same loss on
    stock ops."""
    def no_compiler(**kwargs):
        raise RuntimeError("no C++ compiler")

    rng = np.random.default_rng(1)
    step = [(rng.normal(0, 3, (50, 4)), (rng.random((50, 4)) < 0.3) * 1.0, np.ones((50, 4)))]
    expected = run_steps(fw, stock_ops, False, step, "float64")[0]
    cpp_extension = fw.cpp_extension()
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with pytest.warns(UserWarning, match="could not be built .*no C\\+\\+ compiler"):
        failed = fw.kernel.build()
    assert failed is None
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: object())     # "built", but without the ops
    if fw.kernel is torch_kernel:
        monkeypatch.setattr(torch_kernel, "NAMESPACE", "torch_ref_ghm_never_registered")
    with pytest.warns(UserWarning, match="lacks \\['ghm_slots', 'ghm_counts', 'ghm_harmonized_bce'\\]"):
        assert fw.kernel.build() is None
    monkeypatch.setitem(fw.kernel._loaded, "module", failed)    # this process's load() as if it had failed
    stock_ops(True)
    assert fw.kernel.for_tensor(fw.tensor(np.zeros(1))) is None
    assert fw.kernel.status() == "stock ops (the kernel could not be built)"
    got = run_steps(fw, stock_ops, True, step, "float64")[0]
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])


def test_switch_turns_the_kernel_off(fw, stock_ops):
    stock_ops(True)
    zeros = fw.tensor(np.zeros(1))
    with fw.kernel.disabled():                                  # the context the benchmark uses
        assert fw.kernel.for_tensor(zeros) is None
    assert fw.kernel.for_tensor(zeros) is ops(fw)              # and restored after it
    stock_ops(False)
    assert fw.kernel.for_tensor(zeros) is None
    assert fw.kernel.status().startswith(f"stock ops ({fw.kernel.SWITCH}=0")


def test_torch_kernel_sum_does_not_depend_on_the_thread_count():
    """The loss is summed in fixed blocks, added in order: 1 and 2 threads give the same bits."""
    k = ops(FRAMEWORKS["torch"])
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(0, 4, (50001, 7)).astype("float32"))
    t = torch.tensor((rng.random((50001, 7)) < 0.2).astype("float32"))
    w, upper = torch.ones_like(x), T.GHMC().upper
    table = torch.tensor(rng.random(11).astype("float32"))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(k.ghm_harmonized_bce(x, t, w, upper, table, 10))
    finally:
        torch.set_num_threads(threads)
    assert results[0][0].item() == results[1][0].item()
    assert torch.equal(results[0][1], results[1][1])
