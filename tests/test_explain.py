"""Any pair at every level (pair files, align_train), and divergences explained: module classes, locality,
known framework differences with their canaries."""
import subprocess
import sys

import numpy as np
import paddle
import pytest
import torch

from align import align_backward, align_forward, align_train, build_pair, known_differences
from align.pair_file import PairFileError, load_pair
from align.training import Recipe
from tests.conftest import ROOT

PAIR = ROOT / "examples" / "pairs" / "small_cnn.py"


def test_pair_file_aligns_at_every_level_in_float64(tmp_path):
    pair = load_pair(PAIR, "float64")
    fwd = align_forward(pair.torch_model, pair.paddle_model, pair.inputs, "float64", str(tmp_path / "f"),
                        lambda m, t: m(**t))
    assert fwd["passed"] and fwd["num_keys"] == 8
    assert fwd["modules"]["pool"] == ["AdaptiveAvgPool2d", "MeanPool"]      # classes named on both sides
    bwd = align_backward(pair.torch_model, pair.paddle_model, pair.inputs, "float64", str(tmp_path / "b"),
                         keyword=True)
    assert bwd["passed"] and bwd["num_parameters_compared"] == 8
    train = align_train(pair.torch_model, pair.paddle_model, pair.batches, "float64", str(tmp_path / "t"), steps=3,
                        keyword=True)
    assert train["passed"] and train["steps"] == 3
    assert {f"step002.{k}" for k in ("loss", "grad_norm", "param_norm", "lr")} <= set(train["keys"])
    assert train["keys"]["step002.param_norm"]["max_rel"] < 1e-12


def test_adaptive_avg_pool_pair_fails_backward_with_the_defect_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALL_CNN_POOL", "adaptive")
    pair = load_pair(PAIR, "float64")
    s = align_backward(pair.torch_model, pair.paddle_model, pair.inputs, "float64", str(tmp_path), keyword=True)
    # the gradient reaching the pool's input (relu's second call's output) is the first to differ
    assert not s["passed"] and s["first_divergence"] == "outgrad.relu#1"
    assert s["keys"]["grad.fc.weight"]["passed"] and s["keys"]["outgrad.pool"]["passed"]   # downstream: exact
    assert not s["keys"]["grad.conv2.bias"]["passed"]
    d = s["diagnosis"]["first_divergence"]
    assert (d["module"], d["torch_class"], d["paddle_class"]) == ("relu", "ReLU", "ReLU")
    assert d["gradient_from"] == {"module": "pool", "torch_class": "AdaptiveAvgPool2d",
                                  "paddle_class": "AdaptiveAvgPool2D"}
    assert d["locality"] == "local" and d["worst"]["key"] == "ingrad.call0.0"  # the pool alone differs
    assert d["known_difference"]["name"] == "adaptive_avg_pool2d_float64_backward"
    assert d["known_difference"]["where"] == "pool"
    assert "known difference adaptive_avg_pool2d_float64_backward at pool" in (tmp_path / "diff.txt").read_text()


def test_relu6_in_one_paddle_block_is_found_local_with_both_classes(tmp_path):
    t, p, inputs = build_pair("resnet50")
    p.layer2[1].relu = paddle.nn.ReLU6()
    inputs = {"images": inputs["images"][:1, :, :64, :80] * 4}       # activations above 6 somewhere
    s = align_forward(t, p, inputs, "float64", str(tmp_path))
    assert s["first_divergence"] == "layer2.1.relu#0"
    d = s["diagnosis"]["first_divergence"]
    assert (d["module"], d["torch_class"], d["paddle_class"], d["locality"]) == \
        ("layer2.1.relu", "ReLU", "ReLU6", "local")
    assert s["diagnosis"]["class_mismatches"]["layer2.1.relu"] == ["ReLU", "ReLU6"]
    assert "Conv2d" not in str(s["diagnosis"]["class_mismatches"])    # Conv2d/Conv2D: one layer, two spellings


def test_pair_file_cli_and_its_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "align", *args], capture_output=True, text=True, cwd=ROOT)
    ok = run("backward", "--pair", str(PAIR), "--out", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "small_cnn" / "backward" / "summary.json").is_file()
    both = run("forward", "--pair", str(PAIR), "--model", "resnet50", "--out", str(tmp_path))
    assert both.returncode == 2 and "--model or --pair" in both.stderr
    bad = tmp_path / "bad_pair.py"
    bad.write_text("import torch, paddle, numpy as np\n"
                   "def build_pair(dtype):\n"
                   "    return torch.nn.Linear(3, 2), paddle.nn.Linear(3, 4), {'x': np.zeros((1, 3))}\n")
    res = run("forward", "--pair", str(bad), "--out", str(tmp_path))
    assert res.returncode == 2 and "mis-shaped keys" in res.stderr and "weight" in res.stderr
    empty = tmp_path / "empty_pair.py"
    empty.write_text("x = 1\n")
    with pytest.raises(PairFileError, match="defines no build_pair"):
        load_pair(empty, "float64")


def test_known_difference_table_and_momentum_signature():
    names = [k.name for k in known_differences.KNOWN]
    assert names == ["adaptive_avg_pool2d_float64_backward", "momentum_float32_coefficients", "batchnorm_conventions",
                     "hardsigmoid_slope", "float_equality_tolerance", "cross_entropy_clamp_64",
                     "sqrt_float32_lanes", "nms_float32_threshold"]
    ctx = known_differences.Context("train", "float64", "step001.param_norm", {}, recipe=Recipe(momentum=0.9))
    assert known_differences.match(ctx)["name"] == "momentum_float32_coefficients"
    ctx = known_differences.Context("train", "float64", "step001.param_norm", {}, recipe=Recipe())
    assert known_differences.match(ctx) is None                        # float32-representable: not that
    assert "| Paddle's float == has been |a - b| < 1e-8" in known_differences.table()


def test_canary_hardsigmoid_slope_differs_from_torch():
    x = np.linspace(-2.9, 2.9, 101)
    p = paddle.nn.functional.hardsigmoid(paddle.to_tensor(x)).numpy()
    t = torch.nn.functional.hardsigmoid(torch.tensor(x)).numpy()
    assert np.abs(p - t).max() > 1e-8                                 # slope 0.1666667 vs 1/6
    sixth = paddle.nn.functional.hardsigmoid(paddle.to_tensor(x), slope=1 / 6).numpy()
    assert np.abs(sixth - t).max() > 1e-9                             # the attribute is float32 even in float64
    written = (paddle.nn.functional.relu6(paddle.to_tensor(x) + 3) / 6).numpy()
    np.testing.assert_allclose(written, t, rtol=1e-15, atol=0)        # the workaround


def test_canary_float_equality_is_exact_in_paddle_3_3_1():
    """The table keeps the 1e-8 '==' of earlier Paddle releases (the twins compare ties with '>=' against a
    maximum, exact under either); on Paddle 3.3.1's CPU kernel '==' is exact. If this fails, the tolerance
    is back: the entry's signature applies again."""
    for dtype, near in (("float64", 1.0 + 5e-9), ("float32", 1.0 + 1.2e-7)):
        a, b = paddle.to_tensor(np.array([1.0], dtype)), paddle.to_tensor(np.array([near], dtype))
        assert not bool((a == b).numpy()[0]) and bool((a == a).numpy()[0])
    tiny = paddle.to_tensor(np.array([1e-10])), paddle.to_tensor(np.array([2e-10]))
    assert not bool((tiny[0] == tiny[1]).numpy()[0])


def test_canary_batchnorm_running_variance_is_biased():
    x = np.random.default_rng(0).normal(size=(4, 3, 2, 2))
    pbn, tbn = paddle.nn.BatchNorm2D(3, momentum=0.0), torch.nn.BatchNorm2d(3, momentum=1.0).double()
    pbn.to(dtype="float64")
    pbn.train()
    pbn(paddle.to_tensor(x))
    tbn(torch.tensor(x))
    n = x.size // 3
    np.testing.assert_allclose(pbn._variance.numpy(), x.var(axis=(0, 2, 3)), rtol=1e-12)            # biased
    np.testing.assert_allclose(tbn.running_var.numpy(), x.var(axis=(0, 2, 3)) * n / (n - 1), rtol=1e-12)
    ctx = known_differences.Context("train", "float64", "bn._variance", {}, tbn.running_var.numpy(),
                                    pbn._variance.numpy(), paddle_modules={"bn": "BatchNorm2D"})
    assert known_differences.match(ctx)["name"] == "batchnorm_conventions"


def test_canary_paddle_cross_entropy_clamps_at_64_and_the_twin_does_not():
    """Paddle 3.3.1's cross_entropy clamps each loss at 64 in float64, torch does not, the gradients agree; the
    Libra box head's x - logsumexp(x) gives torch's value."""
    from paddle_impl.roi_heads.bbox_head import Shared2FCBBoxHead
    x = np.array([[100.0, 0.0, 3.0], [0.0, 30.0, 1.0]])
    labels = np.array([1, 1])
    xp = paddle.to_tensor(x, stop_gradient=False)
    p = paddle.nn.functional.cross_entropy(xp, paddle.to_tensor(labels), reduction="none").numpy().ravel()
    xt = torch.tensor(x, requires_grad=True)
    t = torch.nn.functional.cross_entropy(xt, torch.tensor(labels), reduction="none")
    assert p[0] == 64.0 and abs(float(t[0]) - 100.0) < 1e-12          # clamped; torch's is exact
    assert abs(p[1] - float(t[1])) < 1e-12                              # below 64: the same
    assert paddle.nn.functional.log_softmax(paddle.to_tensor(x), axis=-1).numpy()[0, 1] == -64.0   # log_softmax too
    paddle.nn.functional.cross_entropy(xp, paddle.to_tensor(labels), reduction="sum").backward()
    t.sum().backward()
    # the gradient is softmax - onehot, its probabilities also floored at exp(-64) = 1.6e-28: agrees to that
    np.testing.assert_allclose(xp.grad.numpy(), xt.grad.numpy(), rtol=1e-12, atol=2e-28)
    head = Shared2FCBBoxHead(in_channels=1, roi_feat_size=1, fc_out_channels=2, num_classes=2)
    ones = paddle.ones([2], dtype="float64")
    out = head.loss(paddle.to_tensor(x), paddle.zeros([2, 8], dtype="float64"), paddle.to_tensor(labels), ones,
                    paddle.zeros([2, 4], dtype="float64"), paddle.zeros([2, 4], dtype="float64"))
    assert abs(float(out["loss_cls"]) - float(t.sum()) / (2 + 2.0 ** -23)) < 1e-12


def test_canary_paddle_float32_sqrt_depends_on_the_position_and_rounded_sqrt_does_not():
    """Equal inputs in the 8-lane body and in the tail of one Paddle float32 sqrt come out different (on Intel
    CPUs; on the AMD EPYC the project started on the lanes happened to round as the tail for its grids). The
    twins' rounded_sqrt is correctly rounded at every position in both frameworks."""
    from paddle_impl.assigners.assign_utils import rounded_sqrt as paddle_sqrt
    from torch_ref.assigners.assign_utils import rounded_sqrt as torch_sqrt
    values = (np.random.default_rng(0).random(4000) * 1e4).astype(np.float32)
    exact = np.sqrt(values.astype(np.float64)).astype(np.float32)
    # each value 8 times (one chunk) and then 7 times (the tail): 15 roots that must be equal
    rows = np.repeat(values[:, None], 15, axis=1)
    for ours in (paddle_sqrt(paddle.to_tensor(rows)).numpy(), torch_sqrt(torch.tensor(rows)).numpy()):
        np.testing.assert_array_equal(ours, np.repeat(exact[:, None], 15, axis=1))
    for ours in (paddle_sqrt(paddle.to_tensor(values.astype(np.float64))).numpy(),
                 torch_sqrt(torch.tensor(values.astype(np.float64))).numpy()):
        np.testing.assert_allclose(ours, np.sqrt(values.astype(np.float64)), rtol=2.3e-16, atol=0)   # 1 ulp
    native = np.stack([paddle.sqrt(paddle.to_tensor(r)).numpy() for r in rows[:400]])
    np.testing.assert_array_equal(native[:, 8:], np.repeat(exact[:400, None], 7, axis=1))   # the tail: exact
    if not (native[:, :8] != native[:, 8:9]).any():
        pytest.skip("this CPU's float32 sqrt lanes round as its tail (the defect shows on Intel CPUs)")
