"""weights_convert: bit-exact round trip, strict errors that name every bad key, safe loading."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from align.convert import layout_for
from align.zoo import build_twins, get_spec
from tests.conftest import ROOT
from weights_convert.checkpoint_io import CheckpointError, load_paddle, load_torch
from weights_convert.convert import convert_file

CLI = [sys.executable, "-m", "align", "convert"]


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tv_resnet50.pth"
    model = torchvision.models.resnet50()
    torch.save(model.state_dict(), path)
    return path


def _run_cli(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=ROOT)


def test_round_trip_is_bit_exact(resnet_ckpt, tmp_path):
    pd_path, back = tmp_path / "r50.pdparams", tmp_path / "back.pth"
    convert_file(layout_for("resnet50"), str(resnet_ckpt), str(pd_path))
    convert_file(layout_for("resnet50"), str(pd_path), str(back))
    src, rt, pd = load_torch(str(resnet_ckpt)), load_torch(str(back)), load_paddle(str(pd_path))
    assert list(src) == list(rt)
    for k in src:
        assert src[k].dtype == rt[k].dtype and src[k].shape == rt[k].shape, k
        assert src[k].tobytes() == rt[k].tobytes(), k
    assert pd["fc.weight"].shape == (2048, 1000)                  # Linear transposed for Paddle
    np.testing.assert_array_equal(pd["fc.weight"], src["fc.weight"].T)
    np.testing.assert_array_equal(pd["layer1.0.bn1._variance"], src["layer1.0.bn1.running_var"])
    assert not any(k.endswith("num_batches_tracked") for k in pd)


def test_retina_round_trip_paddle_first(tmp_path):
    """A checkpoint Paddle wrote itself (every tensor seeded on the Paddle side) survives Paddle -> torch -> Paddle."""
    import paddle
    _, p = build_twins(get_spec("retina_r50"))
    rng = np.random.default_rng(3)
    for value in p.state_dict().values():
        value.set_value(rng.standard_normal(value.shape).astype(value.numpy().dtype))
    paddle.save(p.state_dict(), str(tmp_path / "a.pdparams"))
    convert_file(layout_for("retina_r50"), str(tmp_path / "a.pdparams"), str(tmp_path / "b.pth"))
    convert_file(layout_for("retina_r50"), str(tmp_path / "b.pth"), str(tmp_path / "b.pdparams"))
    a, b = load_paddle(str(tmp_path / "a.pdparams")), load_paddle(str(tmp_path / "b.pdparams"))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a) and set(a) == set(b)


def test_removed_and_misshaped_keys_are_all_named(resnet_ckpt, tmp_path):
    state = torch.load(resnet_ckpt, weights_only=True)
    del state["layer2.0.conv1.weight"]
    del state["bn1.running_var"]
    state["fc.bias"] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    res = _run_cli("--model", "resnet50", "--src", str(bad), "--dst", str(tmp_path / "out.pdparams"))
    assert res.returncode == 2
    for name in ("layer2.0.conv1.weight", "bn1.running_var", "fc.bias: got (7,), expected (1000,)", "extra.weight"):
        assert name in res.stderr, (name, res.stderr)
    assert not (tmp_path / "out.pdparams").exists()
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".out")]   # no temp file left behind


def test_wrong_shape_in_paddle_checkpoint(resnet_ckpt, tmp_path):
    import paddle
    pd_path = tmp_path / "r50.pdparams"
    convert_file(layout_for("resnet50"), str(resnet_ckpt), str(pd_path))
    state = paddle.load(str(pd_path))
    state["fc.weight"] = paddle.zeros([1000, 2048])                # torch layout: not transposed
    paddle.save(state, str(tmp_path / "wrong.pdparams"))
    with pytest.raises(CheckpointError, match=r"fc.weight: got \(1000, 2048\), expected \(2048, 1000\)"):
        convert_file(layout_for("resnet50"), str(tmp_path / "wrong.pdparams"), str(tmp_path / "x.pth"))


def test_truncated_and_non_checkpoint_files(resnet_ckpt, tmp_path):
    data = resnet_ckpt.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    (tmp_path / "junk.pdparams").write_bytes(b"\x00\x01garbage")
    for name, dst in (("trunc.pth", "o.pdparams"), ("notes.pth", "o.pdparams"), ("junk.pdparams", "o.pth")):
        res = _run_cli("--model", "resnet50", "--src", str(tmp_path / name), "--dst", str(tmp_path / dst))
        assert res.returncode == 2 and name in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / dst).exists()


def test_torch_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_torch(str(tmp_path / "evil.pth"))


def test_same_framework_on_both_sides_is_an_error(resnet_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to convert"):
        convert_file(layout_for("resnet50"), str(resnet_ckpt), str(tmp_path / "copy.pth"))
