"""Libra R-CNN's neck, Sequential(FPN, BFP) (../shared/specs/libra_rcnn.md B.1, B.2 items 3-5, B.3, B.7): keys,
init, and the twins (torch_ref/necks/bfp.py, paddle_impl/necks/bfp.py) against each other and the float64 NumPy
reference (align/numpy_ref/bfp.py) on odd sizes, where the resizing ratios are not integers."""
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as TF

import paddle_impl.necks.bfp as PB
import torch_ref.necks.bfp as TB
from align.numpy_ref import bfp as R
from align.seeded_init import seeded_init_torch
from weights_convert.transfer import copy_torch_to_paddle, paddle_state_numpy, torch_state_numpy

KEYS = Path(__file__).parent / "fixtures" / "libra_keys" / "neck_keys.txt"
C_SHAPES = [(2, 256, 50, 66), (2, 512, 25, 33), (2, 1024, 13, 17), (2, 2048, 7, 9)]   # C2..C5 of 2x3x200x264
P_SIZES = [(50, 66), (25, 33), (13, 17), (7, 9), (4, 5)]                             # P6 = ceil(P5 / 2)
PARTS = ("fpn", "gathered", "refined", "outs")
TOL = 1e-12


def rel(a, b):
    """max |a - b| / max |b|: relative to the array's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def flat(res):
    """{'fpn.0': P2, ..., 'gathered': bsf, 'refined': ..., 'outs.4': out P6}."""
    out = {}
    for k in PARTS:
        out.update({f"{k}.{i}": v for i, v in enumerate(res[k])} if isinstance(res[k], (list, tuple)) else {k: res[k]})
    return out


def run_torch(neck, inputs):
    with torch.no_grad():
        p = neck[0]([torch.from_numpy(x) for x in inputs])
        bsf = neck[1].gather(p)
        refined = neck[1].refine(bsf)
        res = {"fpn": p, "gathered": bsf, "refined": refined, "outs": neck[1].scatter(refined, p)}
        assert all(torch.equal(a, b) for a, b in zip(neck[1](p), res["outs"]))       # forward = the pieces
    return {k: v.numpy() for k, v in flat(res).items()}


def run_paddle(neck, inputs):
    with paddle.no_grad():
        p = neck[0]([paddle.to_tensor(x) for x in inputs])
        bsf = neck[1].gather(p)
        refined = neck[1].refine(bsf)
        res = {"fpn": p, "gathered": bsf, "refined": refined, "outs": neck[1].scatter(refined, p)}
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(neck[1](p), res["outs"]))
    return {k: v.numpy() for k, v in flat(res).items()}


def build_twins(seed=0):
    """float64 twins with seeded weights (every conv, so conv_out is not the zero of B.3) and their mmdet state."""
    t = seeded_init_torch(TB.libra_neck().double(), seed)
    p = PB.libra_neck()
    p.to(dtype="float64")
    copy_torch_to_paddle(t, p)
    return t, p, {f"neck.{k}": v for k, v in torch_state_numpy(t).items()}


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=s) for s in C_SHAPES]
    t, p, state = build_twins()
    return {"inputs": inputs, "torch": t, "paddle": p, "state": state,
            "numpy": flat(R.libra_neck(inputs, state))}


@pytest.fixture(scope="module")
def float64_results(case):
    return run_torch(case["torch"], case["inputs"]), run_paddle(case["paddle"], case["inputs"])


# ---------------------------------------------------------------- keys, init


def test_state_dict_keys_and_shapes_are_mmdetections():
    expected = [line.split("\t") for line in KEYS.read_text().splitlines()]
    for neck in (TB.libra_neck(), PB.libra_neck()):       # conv weights are OIHW in both frameworks
        assert [[f"neck.{k}", str(list(v.shape))] for k, v in neck.state_dict().items()] == expected


@pytest.mark.parametrize("fw", ["torch", "paddle"])
def test_init_weights_follow_b3(fw):
    neck = TB.libra_neck() if fw == "torch" else PB.libra_neck()
    state = torch_state_numpy(neck) if fw == "torch" else paddle_state_numpy(neck)
    assert not any(v.any() for k, v in state.items() if k.endswith(".bias"))
    for k, w in state.items():
        if k.startswith("0.") and k.endswith(".weight"):          # FPN: Xavier uniform, gain 1
            rf = int(np.prod(w.shape[2:]))
            limit = np.sqrt(6.0 / ((w.shape[0] + w.shape[1]) * rf))
            # the weights are drawn in float32 within float32(limit), which may round above the float64 limit
            assert np.abs(w).max() <= np.float32(limit) and np.abs(w).max() > 0.99 * limit, k
            assert abs(w.std() / (limit / np.sqrt(3)) - 1) < 6 / np.sqrt(w.size), k
    for name in ("g", "theta", "phi"):                            # NonLocal2d's own init overrides BFP's Xavier
        w = state[f"1.refine.{name}.conv.weight"]
        assert abs(w.std() / 0.01 - 1) < 6 / np.sqrt(2 * w.size) and abs(w.mean()) < 6e-2 / np.sqrt(w.size)
    assert not state["1.refine.conv_out.conv.weight"].any()


# ---------------------------------------------------------------- float64: twins vs NumPy


def test_shapes_on_odd_sizes(case):
    assert [case["numpy"][f"outs.{i}"].shape[-2:] for i in range(5)] == P_SIZES
    assert case["numpy"]["gathered"].shape == (2, 256, 13, 17)


@pytest.mark.parametrize("part", ["fpn", "gathered", "refined", "outs"])
def test_float64_twins_equal_numpy(case, float64_results, part):
    got_t, got_p = float64_results
    for k, e in case["numpy"].items():
        if k.split(".")[0] == part:
            assert rel(got_t[k], e) <= TOL and rel(got_p[k], e) <= TOL and rel(got_p[k], got_t[k]) <= TOL, k


def test_bfp_at_init_is_the_rescaling_alone():
    """B.3: conv_out is zero at init, so refine(bsf) = bsf exactly and out_i = P_i + scatter(gather(P))_i."""
    rng = np.random.default_rng(5)
    feats = [rng.normal(size=(2, 256, *s)) for s in P_SIZES]
    t, p = TB.BFP().double(), PB.BFP()
    p.to(dtype="float64")
    with torch.no_grad():
        tf = [torch.from_numpy(x) for x in feats]
        got_t = [o.numpy() for o in t(tf)]
        base_t = [o.numpy() for o in t.scatter(t.gather(tf), tf)]
    with paddle.no_grad():
        pf = [paddle.to_tensor(x) for x in feats]
        got_p = [o.numpy() for o in p(pf)]
        base_p = [o.numpy() for o in p.scatter(p.gather(pf), pf)]
    state = {f"neck.1.{k}": v for k, v in torch_state_numpy(t).items()}
    expected = R.bfp(feats, state)["outs"]
    for a, b, c, d, e in zip(got_t, base_t, got_p, base_p, expected):
        assert np.array_equal(a, b) and np.array_equal(c, d) and rel(a, e) <= TOL and rel(c, e) <= TOL
    assert rel(got_t[0], feats[0]) > 0.1                          # the residual itself is not zero


# ---------------------------------------------------------------- planted defects


def _interp_gather(bfp):
    def gather(inputs):                                           # level 0 resized by nearest instead of max pool
        size = inputs[2].shape[-2:]
        feats = [TF.interpolate(inputs[0], size=size, mode="nearest"), TF.adaptive_max_pool2d(inputs[1], size)]
        return sum(feats + [TF.interpolate(x, size=size, mode="nearest") for x in inputs[2:]]) / 5
    bfp.gather = gather


def _scaled(bfp):
    bfp.refine.use_scale = True                                   # the 1/sqrt(C) that mmcv's config turns off


def _softmax_axis(bfp):
    bfp.refine.embedded_gaussian = lambda t, p: torch.matmul(t, p).softmax(dim=1)


@pytest.mark.parametrize("plant", [_interp_gather, _scaled, _softmax_axis])
def test_planted_defect_is_caught(case, plant):
    feats = [torch.from_numpy(case["numpy"][f"fpn.{i}"]) for i in range(5)]
    t = TB.BFP().double()
    t.load_state_dict({k[len("neck.1."):]: torch.from_numpy(v) for k, v in case["state"].items()
                       if k.startswith("neck.1.")})
    plant(t)
    with torch.no_grad():
        outs = [o.numpy() for o in t(feats)]
    worst = max(rel(o, case["numpy"][f"outs.{i}"]) for i, o in enumerate(outs))
    assert worst > 1e-3, worst                                    # caught: nine orders above TOL


# ---------------------------------------------------------------- float32


def test_float32_twins(case):
    """Measured (torch / Paddle vs float64, torch vs Paddle): FPN levels and bsf <= 2.1e-6, the refined bsf up to
    6e-6 and 7e-6, the outputs up to 4.3e-6. The refined bsf is the worst because the attention is unscaled: its
    logits reach |79| (std 15), so float32 rounding in theta, phi and their dot products moves the softmax; a plain
    NumPy float32 evaluation of the same block errs by 5.3e-6, so that is float32, not the port."""
    t, p, _ = build_twins()
    t.float()
    p.to(dtype="float32")
    inputs = [x.astype(np.float32) for x in case["inputs"]]
    got_t, got_p = run_torch(t, inputs), run_paddle(p, inputs)
    for k, e in case["numpy"].items():
        tol = 4e-6 if k.startswith(("fpn", "gathered")) else 1e-5
        assert got_t[k].dtype == got_p[k].dtype == np.float32
        assert rel(got_t[k], e) <= tol and rel(got_p[k], e) <= tol and rel(got_p[k], got_t[k]) <= tol, k


# ---------------------------------------------------------------- the resizing ops


def _pairs():
    """(in, out) pairs of this test's sizes, in both directions (gather and scatter), plus other odd ratios."""
    pairs = {(a[d], b[d]) for a in P_SIZES for b in P_SIZES for d in (0, 1)}
    return sorted(pairs | {(i, o) for i in (1, 2, 3, 5, 7, 10, 19) for o in (1, 3, 4, 6, 11, 23, 38)})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adaptive_max_pool_and_nearest_follow_their_definitions(dtype):
    """Paddle's adaptive_max_pool2d and nearest interpolate equal torch's and the definitions (bins
    [floor(i in/out), ceil((i+1) in/out)), index floor(d in/out)) on every pair used here."""
    rng = np.random.default_rng(11)
    for i, o in _pairs():
        x = rng.normal(size=(1, 3, i, i + 2)).astype(dtype)
        size = (o, o + 1)
        t, p = torch.from_numpy(x), paddle.to_tensor(x)
        for got in (TF.adaptive_max_pool2d(t, size).numpy(), paddle.nn.functional.adaptive_max_pool2d(p, size).numpy()):
            assert np.array_equal(got, R.adaptive_max_pool(x, size).astype(dtype)), (i, o)
        for got in (TF.interpolate(t, size=size, mode="nearest").numpy(),
                    paddle.nn.functional.interpolate(p, size=list(size), mode="nearest").numpy()):
            assert np.array_equal(got, R.nearest(x, size)), (i, o)


def _nearest_src(fw, n_in, n_out, dtype):
    x = np.arange(n_in, dtype=dtype).reshape(1, 1, n_in, 1)
    if fw == "torch":
        y = TF.interpolate(torch.from_numpy(x), size=(n_out, 1), mode="nearest").numpy()
    else:
        y = paddle.nn.functional.interpolate(paddle.to_tensor(x), size=[n_out, 1], mode="nearest").numpy()
    return y.ravel().astype(np.int64)


def test_nearest_rounding_where_the_frameworks_leave_the_definition():
    """Both frameworks compute d * in/out in floating point, so where it is an integer they can floor one below:
    measured, Paddle (float32 and float64) and torch float32 use a float32 scale, torch float64 another rule. None
    of it reaches mmdet's padded inputs: every P6 -> P4, P5 -> P4, P4 -> P3 and P4 -> P2 pair of a side that is a
    multiple of 32 up to 3136 follows the definition in all four."""
    for fw in ("torch", "paddle"):
        for dtype in (np.float32, np.float64):
            assert _nearest_src(fw, 14, 46, dtype)[23] == 6 != R.nearest_index(14, 46)[23] == 7
            for side in range(32, 3137, 32):
                for n_in, n_out in ((-(-side // 64), side // 16), (side // 32, side // 16), (side // 16, side // 8),
                                    (side // 16, side // 4)):
                    assert np.array_equal(_nearest_src(fw, n_in, n_out, dtype), R.nearest_index(n_in, n_out))
    # the twins disagree with each other too: torch float64 follows the definition here, Paddle does not
    assert _nearest_src("torch", 45, 129, np.float64)[43] == R.nearest_index(45, 129)[43] == 15
    assert _nearest_src("paddle", 45, 129, np.float64)[43] == 14
