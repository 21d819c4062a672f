"""torch_ref/ops/paddle_semantics.py reproduces what Paddle computes, and each difference it works around is
still there in the installed frameworks (../shared/specs/ppyoloe.md A.14)."""
import numpy as np
import paddle
import torch

from torch_ref.ops.paddle_semantics import (
    PADDLE_BN_EPSILON,
    PADDLE_BN_MOMENTUM,
    PaddleBatchNorm2d,
    one_hot,
    paddle_hardsigmoid,
)


def _paddle_bn_step(x, channels):
    bn = paddle.nn.BatchNorm2D(channels)
    bn.to(dtype="float64")
    bn.train()
    out = bn(paddle.to_tensor(x))
    return out.numpy(), bn._mean.numpy(), bn._variance.numpy()


def test_batch_norm_training_step_is_paddles():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 3, 5, 5))
    out_p, mean_p, var_p = _paddle_bn_step(x, 3)
    ours = PaddleBatchNorm2d(3).double().train()
    out_t = ours(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out_t, out_p, rtol=0, atol=1e-14)
    np.testing.assert_allclose(ours.running_mean.numpy(), mean_p, rtol=1e-15, atol=0)
    np.testing.assert_allclose(ours.running_var.numpy(), var_p, rtol=1e-15, atol=0)
    # Paddle's closed form: float32 momentum, biased batch variance
    biased = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(var_p, 0.8999999761581421 * 1.0 + 0.10000002384185791 * biased, rtol=1e-15)
    assert PADDLE_BN_MOMENTUM == 0.10000002384185791 and PADDLE_BN_EPSILON == 9.999999747378752e-06


def test_torch_builtin_batch_norm_still_differs():
    """torch's BatchNorm2d updates with the unbiased variance (and momentum 0.1 exactly): the defect the helper
    works around is still there."""
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 3, 5, 5))
    _, _, var_p = _paddle_bn_step(x, 3)
    builtin = torch.nn.BatchNorm2d(3).double().train()
    builtin(torch.from_numpy(x))
    assert np.abs(builtin.running_var.numpy() - var_p).max() > 1e-3


def test_batch_norm_eval_uses_float32_epsilon_like_paddle():
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 4))
    var = np.array([1e-6, 1e-5, 2.0])
    pb = paddle.nn.BatchNorm2D(3)
    pb.to(dtype="float64")
    pb._variance.set_value(var)
    pb.eval()
    tb = PaddleBatchNorm2d(3).double().eval()
    tb.running_var.copy_(torch.from_numpy(var))
    out_p, out_t = pb(paddle.to_tensor(x)).numpy(), tb(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out_t, out_p, rtol=1e-14)
    exact = torch.nn.BatchNorm2d(3, eps=1e-5).double().eval()
    exact.running_var.copy_(torch.from_numpy(var))
    assert np.abs(exact(torch.from_numpy(x)).detach().numpy() - out_p).max() > 1e-9   # Paddle's eps is float32


def test_hardsigmoid_is_paddles_and_torchs_differs():
    x = np.array([-3.0, -2.9999995, -1.0, 0.0, 0.3, 1.7, 2.9999995, 3.0, 4.0])
    ref = paddle.nn.functional.hardsigmoid(paddle.to_tensor(x)).numpy()
    np.testing.assert_array_equal(paddle_hardsigmoid(torch.from_numpy(x)).numpy(), ref)
    assert ref[4] == np.float64(0.3) * 0.16666670143604279 + 0.5          # 0.5500000104, not 0.55
    assert ref[6] == 1.0 and ref[1] == 0.0                                # saturates before +-3
    builtin = torch.nn.functional.hardsigmoid(torch.from_numpy(x)).numpy()
    assert abs(builtin[4] - ref[4]) > 1e-8 and builtin[6] < 1.0
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(paddle_hardsigmoid(torch.from_numpy(x32)).numpy(),
                                  paddle.nn.functional.hardsigmoid(paddle.to_tensor(x32)).numpy())


def test_one_hot_dtypes():
    labels = np.array([0, 2, 1])
    assert paddle.nn.functional.one_hot(paddle.to_tensor(labels), 3).dtype == paddle.float32
    assert torch.nn.functional.one_hot(torch.from_numpy(labels), 3).dtype == torch.int64
    ours = one_hot(torch.from_numpy(labels), 3, torch.float64)
    assert ours.dtype == torch.float64
    np.testing.assert_array_equal(ours.numpy(), np.eye(3)[labels])
