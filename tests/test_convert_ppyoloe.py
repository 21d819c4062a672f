"""PP-YOLOE weight conversion: the converter's layout is PaddleDetection 2.6's state_dict at every scale, a seeded
torch checkpoint of ppyoloe_s goes torch -> Paddle -> torch bit-exactly, a released-style Paddle file
(ppyoloe_crn_s_300e_coco.pdparams, written by paddle.save) loads as it is and gives the same float64 forward in
both twins, and files that do not fit are refused (exit 2) naming the keys, with nothing written."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from align import convert as convert_cli
from align.compare import diff_stats
from align.convert import layout_for
from align.zoo import build_models, build_twins, get_spec
from align.zoo.ppyoloe import SCALES
from tests.conftest import ROOT
from weights_convert.checkpoint_io import load_paddle, load_torch
from weights_convert.convert import convert_file, paddle_dtypes
from weights_convert.rules import torch_key_to_paddle as to_paddle

CLI = [sys.executable, "-m", "align", "convert"]
KEYS = ROOT / "tests" / "fixtures" / "ppyoloe_keys"


def reference(scale):
    """[(name, shape, dtype or None)] of PaddleDetection's ppyoloe_crn_<scale>_300e_coco, in its order."""
    rows = [line.split("\t") for line in (KEYS / f"ppyoloe_{scale}_keys.txt").read_text().splitlines()]
    return [(r[0], tuple(json.loads(r[1])), r[2].replace("paddle.", "") if len(r) > 2 else None) for r in rows]


def _run_cli(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def torch_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("torch") / "ppyoloe_s.pth"
    torch_model, _ = build_models(get_spec("ppyoloe_s"), seed=0)
    torch.save(torch_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A Paddle twin filled from NumPy on the Paddle side and saved by paddle.save, as PaddleDetection ships it."""
    import paddle
    _, model = build_twins(get_spec("ppyoloe_s"))
    rng = np.random.default_rng(7)
    for name, value in model.state_dict().items():
        shape = value.shape
        if len(shape) == 1 and name.endswith(("_variance", ".weight")):   # BN scales near 1: the signal
            array = rng.uniform(0.5, 1.5, shape)                           # reaches the head from the stem
        else:                                        # fan-in scaled, so activations stay O(1) through the net
            array = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.2, shape)
        value.set_value(array.astype(value.numpy().dtype))
    path = tmp_path_factory.mktemp("paddle") / "ppyoloe_crn_s_300e_coco.pdparams"
    paddle.save(model.state_dict(), str(path))
    return path, model


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_layout_is_paddledetections(scale):
    layout = layout_for(f"ppyoloe_{scale}")
    ref = reference(scale)
    assert list(layout.paddle_shapes.items()) == [(name, shape) for name, shape, _ in ref]   # names, order, shapes
    assert {layout.key_rule(k) for k in layout.torch_shapes} - {None} == set(layout.paddle_shapes)
    dropped = [k for k in layout.torch_shapes if layout.key_rule(k) is None]
    assert all(k.endswith(".num_batches_tracked") for k in dropped)
    assert len(dropped) == sum(name.endswith("._mean") for name, _, _ in ref)
    assert not layout.linear_keys                    # no nn.Linear: nothing is transposed
    dtypes = paddle_dtypes(layout)
    assert all(dtypes[name] == (dtype or "float32") for name, _, dtype in ref)


def test_torch_round_trip_is_bit_exact(torch_ckpt, tmp_path):
    pd_path, back = tmp_path / "ppyoloe_s.pdparams", tmp_path / "back.pth"
    res = _run_cli("--model", "ppyoloe_s", "--src", torch_ckpt, "--dst", pd_path)
    assert res.returncode == 0, res.stderr
    assert "(torch) -> " in res.stdout and "(paddle) for ppyoloe_s" in res.stdout
    convert_file(layout_for("ppyoloe_s"), str(pd_path), str(back))
    src, rt, pd = load_torch(str(torch_ckpt)), load_torch(str(back)), load_paddle(str(pd_path))
    assert list(src) == list(rt)
    for k in src:
        assert (src[k].dtype, src[k].shape, src[k].tobytes()) == (rt[k].dtype, rt[k].shape, rt[k].tobytes()), k
    assert [(k, v.shape) for k, v in pd.items()] == [(name, shape) for name, shape, _ in reference("s")]
    assert {str(v.dtype) for v in pd.values()} == {"float32"}
    assert not any(k.endswith("num_batches_tracked") or k.endswith("running_var") for k in pd)
    assert all(pd[to_paddle(k)].tobytes() == src[k].tobytes() for k in src if to_paddle(k)), "values differ"
    assert src["backbone.stem.conv1.bn.running_var"].std() > 0       # seeded, not the constant init


def test_released_paddle_checkpoint_converts_and_forwards_alike(released, tmp_path, capsys):
    import paddle
    path, p = released
    pd = load_paddle(str(path))
    assert [(k, v.shape) for k, v in pd.items()] == [(name, shape) for name, shape, _ in reference("s")]
    dst = tmp_path / "ppyoloe_s.pth"
    assert convert_cli.main(["--model", "ppyoloe_s", "--src", str(path), "--dst", str(dst)]) == 0
    assert "(paddle) -> " in capsys.readouterr().out
    state = torch.load(dst, weights_only=True)
    t, _ = build_twins(get_spec("ppyoloe_s"))
    t.load_state_dict(state, strict=True)
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            assert v.dtype == torch.int64 and int(v) == 0, k
        else:
            assert v.numpy().tobytes() == pd[to_paddle(k)].tobytes(), k
    t.double().eval()
    p.to(dtype="float64")
    p.eval()
    images = np.random.default_rng(1).normal(size=(1, 3, 96, 128))
    with torch.no_grad():
        t_cls, t_reg = t(torch.from_numpy(images))
    p_cls, p_reg = p(paddle.to_tensor(images))
    assert [tuple(c.shape) for c in t_cls] == [(1, 80, 3, 4), (1, 80, 6, 8), (1, 80, 12, 16)]
    assert [tuple(r.shape) for r in t_reg] == [(1, 68, 3, 4), (1, 68, 6, 8), (1, 68, 12, 16)]
    for a, b in zip(t_cls + t_reg, p_cls + p_reg):
        a, b = a.numpy(), b.numpy()
        assert a.dtype == b.dtype == np.float64 and np.isfinite(a).all() and a.std() > 0.05
        assert diff_stats(a, b)["max_rel"] <= 1e-9
    with torch.no_grad():                            # control: 0.1% off one backbone BN is seen far above 1e-9
        t.backbone.stages[2].blocks[0].conv1.bn.running_var.mul_(1.001)
        t_out = sum(t(torch.from_numpy(images)), [])
    assert max(diff_stats(b.numpy(), a.numpy())["max_rel"] for a, b in zip(t_out, p_cls + p_reg)) > 1e-7


def test_paddle_checkpoint_missing_a_key_is_refused(released, tmp_path):
    import paddle
    state = paddle.load(str(released[0]))
    del state["yolo_head.pred_cls.0.weight"]
    paddle.save(state, str(tmp_path / "bad.pdparams"))
    res = _run_cli("--model", "ppyoloe_s", "--src", tmp_path / "bad.pdparams", "--dst", tmp_path / "out.pth")
    assert res.returncode == 2, res.stderr
    assert "missing keys (1): yolo_head.pred_cls.0.weight" in res.stderr and "Traceback" not in res.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bad.pdparams"]


def test_wrong_scale_is_refused(torch_ckpt, tmp_path, capsys):
    dst = tmp_path / "m.pdparams"
    assert convert_cli.main(["--model", "ppyoloe_m", "--src", str(torch_ckpt), "--dst", str(dst)]) == 2
    err = capsys.readouterr().err
    assert "backbone.stem.conv1.conv.weight: got (16, 3, 3, 3), expected (24, 3, 3, 3)" in err
    assert "missing keys" in err and "backbone.stages.0.blocks.1.conv1.conv.weight" in err
    assert not list(tmp_path.iterdir())
