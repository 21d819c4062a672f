"""Checkpoints run no code (restricted Paddle unpickler) and their weights are validated (NaN/Inf, dtypes)."""
import collections
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import align.convert as convert_cli
from tests.conftest import ROOT
from weights_convert.checkpoint_io import CheckpointError, load_checkpoint, load_paddle, load_torch, validate_state
from weights_convert.convert import convert_file, layout_from_models


# ---------------------------------------------------------------- crafted pickles
class _System:
    """A pickle calling os.system (global posix.system) when loaded."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _PayloadThenDict:
    """A pickle that writes the marker and then evaluates to a real state dict (global builtins.eval)."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"(open({str(self.marker)!r}, 'w').close(), {{'w': __import__('numpy').ones(3, 'float32')}})[1]",)


def _write_evil(path, kind, marker):
    obj = {"w": _System(marker)} if kind == "system" else _PayloadThenDict(marker)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return "posix.system" if kind == "system" else "builtins.eval"


def test_crafted_pickles_are_live(tmp_path):
    """The fixtures really run code under a plain unpickler (what paddle.load is), so the tests below mean it."""
    _write_evil(tmp_path / "a.pdparams", "dict", tmp_path / "marker")
    state = pickle.loads((tmp_path / "a.pdparams").read_bytes())
    assert (tmp_path / "marker").exists() and list(state) == ["w"]


@pytest.mark.parametrize("kind", ["system", "dict"])
@pytest.mark.parametrize("name", ["evil.pdparams", "evil.weights"])      # known suffix, sniffed unknown suffix
def test_malicious_paddle_pickle_runs_nothing(tmp_path, kind, name):
    marker = tmp_path / "marker"
    forbidden = _write_evil(tmp_path / name, kind, marker)
    with pytest.raises(CheckpointError, match=f"forbidden global {forbidden}") as err:
        load_checkpoint(str(tmp_path / name))
    assert name in str(err.value)
    assert not marker.exists()


def test_unknown_suffix_sniffing(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "m.model")                 # a zip: torch
    assert load_checkpoint(str(tmp_path / "m.model"))[0] == "torch"
    import paddle
    paddle.save({"w": paddle.ones([2])}, str(tmp_path / "m.weights"))      # a pickle: Paddle, restricted
    fw, state = load_checkpoint(str(tmp_path / "m.weights"))
    assert fw == "paddle" and np.array_equal(state["w"], np.ones(2, "float32"))
    (tmp_path / "notes.weights").write_text("hello\n")
    with pytest.raises(CheckpointError, match=r"neither a zip \(torch\) nor a pickle \(Paddle\).*\.pdparams.*\.pth"):
        load_checkpoint(str(tmp_path / "notes.weights"))


# ---------------------------------------------------------------- real paddle.save files
def _values():
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype("float32"),
            "fc.weight": rng.standard_normal((5, 2)),                      # float64
            "bn._mean": rng.standard_normal(4).astype("float16"),
            "step": np.arange(3, dtype="int64"), "mask": np.array([True, False]),
            "scalar": np.array(2.5, dtype="float32")}


@pytest.mark.parametrize("layout", ["tensors", "ndarrays", "state_dict", "model_ordered"])
@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_real_paddle_files_load_equal(tmp_path, layout, protocol):
    import paddle
    values = _values()
    tensors = {k: paddle.to_tensor(v) for k, v in values.items()}
    obj = {"tensors": tensors, "ndarrays": values, "state_dict": {"state_dict": tensors, "epoch": 3},
           "model_ordered": {"model": collections.OrderedDict(tensors)}}[layout]
    path = str(tmp_path / "x.pdparams")
    paddle.save(obj, path, protocol=protocol)
    got = load_paddle(path)
    assert list(got) == list(values)
    for k, v in values.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k


def test_big_tensor_and_split_slices(tmp_path):
    import paddle
    big = np.random.default_rng(1).standard_normal((1024, 4096)).astype("float32")   # 16 MiB
    paddle.save({"big": paddle.to_tensor(big)}, str(tmp_path / "big.pdparams"))
    assert np.array_equal(load_paddle(str(tmp_path / "big.pdparams"))["big"], big)
    # Protocols 2/3 split arrays over 1 GiB into flat slices (paddle's _unpack_saved_dict); the same layout
    # written small, checked against paddle.load itself.
    flat = big[:6].reshape(-1)
    info = {"big": {"OriginShape": (6, 4096), "slices": ["big@@.0", "big@@.1"]}}
    split = {"big@@.0": flat[:10000], "big@@.1": flat[10000:], "b": np.ones(2, "float32"),
             "UnpackBigParamInfor@@": info,  # typos: disable-line
             "StructuredToParameterName@@": {"big": "w_0", "b": "b_0"}}
    with open(tmp_path / "split.pdparams", "wb") as f:
        pickle.dump(split, f, protocol=2)
    got = load_paddle(str(tmp_path / "split.pdparams"))
    ref = paddle.load(str(tmp_path / "split.pdparams"), return_numpy=True)
    assert sorted(got) == sorted(ref) == ["b", "big"]
    assert np.array_equal(got["big"], big[:6]) and np.array_equal(ref["big"], got["big"])


# ---------------------------------------------------------------- conversion and validation (tiny model)
@pytest.fixture(scope="module")
def tiny():
    import paddle
    t = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    p = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))
    return layout_from_models(t, p), {k: v.detach().numpy().copy() for k, v in t.state_dict().items()}


def _torch_file(path, state):
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
    return str(path)


def test_torch_round_trip(tmp_path, tiny):
    layout, state = tiny
    state = {k: (np.random.default_rng(2).standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
             for k, v in state.items()}
    src = _torch_file(tmp_path / "a.pth", state)
    convert_file(layout, src, str(tmp_path / "b.pdparams"))
    convert_file(layout, str(tmp_path / "b.pdparams"), str(tmp_path / "c.pth"))
    back = load_torch(str(tmp_path / "c.pth"))
    assert list(back) == list(state)
    assert all(back[k].dtype == v.dtype and back[k].tobytes() == v.tobytes() for k, v in state.items())
    assert back["1.num_batches_tracked"].dtype == np.int64                 # integer buffer: allowed as is


def test_bad_weights_refused_naming_keys_and_accepted_with_flags(tmp_path, tiny):
    layout, state = tiny
    bad = dict(state)
    bad["0.weight"] = state["0.weight"].copy()
    bad["0.weight"][0, 0] = np.nan
    bad["1.running_var"] = np.full(4, np.inf, "float32")
    bad["0.bias"] = np.arange(4, dtype="int64")
    bad["1.weight"] = np.array([0.5, 1, 2, 3], "float16")
    src = _torch_file(tmp_path / "bad.pth", bad)
    with pytest.raises(CheckpointError) as err:
        convert_file(layout, src, str(tmp_path / "out.pdparams"))
    msg = str(err.value)
    assert "NaN/Inf values (2: 0.weight, 1.running_var)" in msg and "--allow-nonfinite" in msg
    assert "0.bias (int64 -> float32)" in msg and "1.weight (float16 -> float32)" in msg and "--cast" in msg
    assert not (tmp_path / "out.pdparams").exists()
    with pytest.raises(CheckpointError, match="NaN/Inf"):                # --cast alone does not allow NaN
        convert_file(layout, src, str(tmp_path / "out.pdparams"), cast=True)
    convert_file(layout, src, str(tmp_path / "out.pdparams"), allow_nonfinite=True, cast=True)
    got = load_paddle(str(tmp_path / "out.pdparams"))
    assert got["0.bias"].dtype == np.float32 and np.array_equal(got["0.bias"], [0, 1, 2, 3])
    assert got["1.weight"].dtype == np.float32 and np.array_equal(got["1.weight"], [0.5, 1, 2, 3])
    assert np.isnan(got["0.weight"][0, 0]) and np.isposinf(got["1._variance"]).all()
    np.testing.assert_array_equal(got["0.weight"][1:], state["0.weight"].T[1:])   # Linear transposed


def test_paddle_source_validated(tmp_path, tiny):
    import paddle
    layout, state = tiny
    src = str(tmp_path / "a.pdparams")
    convert_file(layout, _torch_file(tmp_path / "a.pth", state), src)
    pd_state = paddle.load(src)
    pd_state["1._mean"] = paddle.to_tensor(np.array([1, 2, 3, 4], "float16"))
    paddle.save(pd_state, src)
    with pytest.raises(CheckpointError, match=r"1\._mean \(float16 -> float32\)"):
        convert_file(layout, src, str(tmp_path / "b.pth"))
    convert_file(layout, src, str(tmp_path / "b.pth"), cast=True)
    assert np.array_equal(load_torch(str(tmp_path / "b.pth"))["1.running_mean"], np.arange(1, 5, dtype="float32"))


def test_validate_state_without_model_and_bfloat16(tmp_path):
    state = {f"w{i}": np.zeros(2, "int32") for i in range(7)}
    state["bn.num_batches_tracked"] = np.array(5)
    with pytest.raises(CheckpointError, match=r"\(7: w0 \(int32 -> float32\), .*w4 \(int32 -> float32\), \.\.\.\)"):
        validate_state(state, "f.pth")
    out = validate_state(state, "f.pth", cast=True)
    assert out["w6"].dtype == np.float32 and out["bn.num_batches_tracked"].dtype == np.int64
    # bfloat16 comes as uint16 bits (torch side: load_torch; Paddle side: paddle.save) and casts exactly
    values = torch.tensor([1.5, -2.0, 3.140625], dtype=torch.bfloat16)
    torch.save({"w": values}, tmp_path / "bf.pth")
    with pytest.raises(CheckpointError, match="bfloat16 tensors"):     # a model would take the bits as integers
        load_torch(str(tmp_path / "bf.pth"))
    loaded = load_checkpoint(str(tmp_path / "bf.pth"))[1]
    assert loaded["w"].dtype == np.uint16
    with pytest.raises(CheckpointError, match=r"w \(uint16/bfloat16 -> float32\)"):
        validate_state(loaded, "bf.pth")
    assert np.array_equal(validate_state(loaded, "bf.pth", cast=True)["w"], values.float().numpy())


# ---------------------------------------------------------------- command line
def _no_model(name):
    raise AssertionError("the model was built before the paths were checked")


@pytest.mark.parametrize("case", ["missing_src", "dst_dir", "dst_unwritable", "dst_suffix", "src_unknown",
                                  "same_framework"])
def test_cli_bad_paths_exit_2_one_line_before_building(tmp_path, monkeypatch, capsys, case):
    monkeypatch.setattr(convert_cli, "layout_for", _no_model)
    good = _torch_file(tmp_path / "a.pth", {"w": np.ones(2, "float32")})
    (tmp_path / "notes.txt").write_text("hello\n")
    src, dst = {"missing_src": (str(tmp_path / "nope.pth"), str(tmp_path / "o.pdparams")),
                "dst_dir": (good, str(tmp_path)),
                "dst_unwritable": (good, "/proc/convert_test/o.pdparams"),
                "dst_suffix": (good, str(tmp_path / "o.weights")),
                "src_unknown": (str(tmp_path / "notes.txt"), str(tmp_path / "o.pdparams")),
                "same_framework": (good, str(tmp_path / "o.pt"))}[case]
    assert convert_cli.main(["--model", "resnet50", "--src", src, "--dst", dst]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert: error: ") and err.count("\n") == 1, err
    assert not os.path.exists(os.path.join(tmp_path, "o.pdparams"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_cli_read_only_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert_cli, "layout_for", _no_model)
    good = _torch_file(tmp_path / "a.pth", {"w": np.ones(2, "float32")})
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert convert_cli.main(["--model", "resnet50", "--src", good, "--dst", str(ro / "o.pdparams")]) == 2
    assert "cannot write in" in capsys.readouterr().err


def test_cli_flags_reach_validation(tmp_path, monkeypatch, capsys, tiny):
    layout, state = tiny
    monkeypatch.setattr(convert_cli, "layout_for", lambda name: layout)
    src = _torch_file(tmp_path / "a.pth", {**state, "0.bias": np.array([np.nan, 1, 2, 3], "float32")})
    args = ["--model", "resnet50", "--src", src, "--dst", str(tmp_path / "o.pdparams")]
    assert convert_cli.main(args) == 2
    assert "0.bias" in capsys.readouterr().err
    assert convert_cli.main(args + ["--allow-nonfinite"]) == 0
    assert np.isnan(load_paddle(str(tmp_path / "o.pdparams"))["0.bias"][0])


def test_cli_subprocess_one_line_and_true_help(tmp_path):
    cli = [sys.executable, "-m", "align", "convert"]
    res = subprocess.run(cli + ["--model", "resnet50", "--src", str(tmp_path / "nope.pth"),
                                "--dst", str(tmp_path / "o.pdparams")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [f"convert: error: {tmp_path / 'nope.pth'}: "
                                                                       "no such file"], res.stderr
    help_text = subprocess.run(cli + ["--help"], capture_output=True, text=True, cwd=ROOT).stdout
    assert "same bytes" not in help_text and "same\nbytes" not in help_text
    assert "keys, shapes, dtypes and values" in " ".join(help_text.split())
    assert "--allow-nonfinite" in help_text and "--cast" in help_text
