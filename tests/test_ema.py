"""ModelEMA twins (spec A.13) against a float64 NumPy closed form, on a tiny conv + BN + proj_conv model pair."""
import numpy as np
import paddle
import pytest
import torch

from paddle_impl.optim.ema import ModelEMA as PaddleEMA
from torch_ref.optim.ema import ModelEMA as TorchEMA

K = 5
TOL = 1e-14
PROJ = "proj_conv.weight"
TORCH_KEY = {"bn._mean": "bn.running_mean", "bn._variance": "bn.running_var"}    # Paddle key -> torch key


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.bn = torch.nn.BatchNorm2d(3)
        self.proj_conv = torch.nn.Conv2d(3, 1, 1, bias=False)


class PaddleNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(2, 3, 3)
        self.bn = paddle.nn.BatchNorm2D(3)
        self.proj_conv = paddle.nn.Conv2D(3, 1, 1, bias_attr=False)


def tkey(k):
    return TORCH_KEY.get(k, k)


def make_models():
    old = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        pnet = PaddleNet()
    finally:
        paddle.set_default_dtype(old)
    tnet = TorchNet().double()
    return tnet, pnet


def set_weights(tnet, pnet, rng):
    """Stands in for an optimiser step: new float64 values for every entry, the same in both frameworks."""
    tstate, values = tnet.state_dict(), {}
    for k, p in pnet.state_dict().items():
        a = rng.standard_normal(p.shape)
        values[k] = np.abs(a) + 0.5 if k.endswith("_variance") else a
        p.set_value(values[k])                       # in place: black-listed references follow
        with torch.no_grad():
            tstate[tkey(k)].copy_(torch.from_numpy(values[k]))   # shares the parameter's storage
    return values


def decays(n):
    return [min(0.9998, (1 + i) / (10 + i)) for i in range(n)]


def closed_form(history):
    """v_K = sum_i (1-d_i) prod_{j>i} d_j p_i, apply = v_K / (1 - d_K**K): independent of the recursion."""
    n, d = len(history), decays(len(history))
    out = {}
    for k in history[0]:
        v = sum((1 - d[i]) * np.prod(d[i + 1:]) * history[i][k] for i in range(n))
        out[k] = v / (1 - d[-1] ** n)
    return out


def rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def drive(steps, seed=0):
    tnet, pnet = make_models()
    tema, pema = TorchEMA(tnet), PaddleEMA(pnet)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(steps):
        history.append(set_weights(tnet, pnet, rng))
        tema.update(tnet)
        pema.update(pnet)
    return tnet, pnet, tema, pema, history


def outputs(tema, pema):
    t = {k: v.numpy() for k, v in tema.apply().items()}
    p = {k: v.numpy() for k, v in pema.apply().items()}
    return t, p


def test_matches_closed_form():
    tnet, pnet, tema, pema, history = drive(K)
    t, p = outputs(tema, pema)
    assert set(p) == set(pnet.state_dict())
    assert set(t) == {tkey(k) for k in p}           # same entries up to key names
    assert "bn.num_batches_tracked" not in t and "bn.num_batches_tracked" not in tema.state_dict()
    want = closed_form(history)
    for k in want:
        if k == PROJ:
            continue
        assert t[tkey(k)].dtype == p[k].dtype == np.float64
        assert rel_err(p[k], want[k]) <= TOL, k
        assert rel_err(t[tkey(k)], want[k]) <= TOL, k
        assert rel_err(t[tkey(k)], p[k]) <= TOL, k
    assert tema.step == pema.step == K and tema.decay_last == pema.decay_last == decays(K)[-1]
    # no autograd graph on either side
    assert all(not v.requires_grad for v in tema.apply().values())
    assert all(v.stop_gradient for v in pema.apply().values())


def test_wrong_correction_would_fail():
    """A planted product-of-decays correction differs from the expected values by far more than TOL."""
    *_, tema, pema, history = drive(K)
    t, p = outputs(tema, pema)
    want, d = closed_form(history), decays(K)
    for k in want:
        if k == PROJ:
            continue
        wrong = want[k] * (1 - d[-1] ** K) / (1 - np.prod(d))
        assert rel_err(wrong, want[k]) > 1e6 * TOL
        assert rel_err(p[k], wrong) > 1e6 * TOL and rel_err(t[tkey(k)], wrong) > 1e6 * TOL


def test_black_listed_follows_live_tensor():
    tnet, pnet, tema, pema, history = drive(K)
    t, p = outputs(tema, pema)
    np.testing.assert_array_equal(p[PROJ], history[-1][PROJ])    # never decayed nor corrected
    np.testing.assert_array_equal(t[PROJ], history[-1][PROJ])
    set_weights(tnet, pnet, np.random.default_rng(99))         # changed after the last update
    t2, p2 = outputs(tema, pema)
    np.testing.assert_array_equal(p2[PROJ], pnet.state_dict()[PROJ].numpy())
    np.testing.assert_array_equal(t2[PROJ], tnet.state_dict()[PROJ].numpy())
    np.testing.assert_array_equal(p2["conv.weight"], p["conv.weight"])   # the others wait for update()


def test_step_zero_returns_zeros():
    tnet, pnet = make_models()
    t, p = outputs(TorchEMA(tnet), PaddleEMA(pnet))
    assert set(t) == {tkey(k) for k in p}
    for k in p:
        if k == PROJ:
            np.testing.assert_array_equal(p[k], pnet.state_dict()[k].numpy())
            np.testing.assert_array_equal(t[k], tnet.state_dict()[k].numpy())
        else:
            assert not p[k].any() and not t[tkey(k)].any(), k


@pytest.mark.parametrize("split", [0, 3])
def test_state_dict_round_trip(tmp_path, split):
    """Saved after `split` updates and loaded into a fresh EMA, the EMA continues bit for bit."""
    tnet, pnet, tema, pema, _ = drive(split)
    torch.save(tema.state_dict(), tmp_path / "ema.pt")
    paddle.save(pema.state_dict(), str(tmp_path / "ema.pdparams"))
    tema2, pema2 = TorchEMA(tnet), PaddleEMA(pnet)
    tema2.set_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))   # plain values and tensors
    pema2.set_state_dict(paddle.load(str(tmp_path / "ema.pdparams")))
    assert (tema2.step, tema2.decay_last) == (tema.step, tema.decay_last)
    assert (pema2.step, pema2.decay_last) == (pema.step, pema.decay_last)
    rng = np.random.default_rng(7)
    for _ in range(K - split):
        set_weights(tnet, pnet, rng)
        for ema in (tema, tema2):
            ema.update(tnet)
        for ema in (pema, pema2):
            ema.update(pnet)
    (t, p), (t2, p2) = outputs(tema, pema), outputs(tema2, pema2)
    for k in p:
        np.testing.assert_array_equal(p2[k], p[k])
        np.testing.assert_array_equal(t2[tkey(k)], t[tkey(k)])
