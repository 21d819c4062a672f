"""align.store and the recording behind it: copies safe from in-place ops, the memory budget, the disk spill,
statistics-only keys, and a forward check that compares its last run as it arrives."""
import json
import os

import numpy as np
import pytest
import torch

from align.forward import align_forward, run_side
from align.hooks import record
from align.store import IN_MEMORY_BYTES, TensorStore, tensor_stats


def _arrays():
    rng = np.random.default_rng(3)
    return {"small": rng.normal(size=(4, 5)), "big": rng.normal(size=(IN_MEMORY_BYTES // 8 + 10,)),
            "ints": rng.integers(0, 9, size=(300_000,))}


@pytest.mark.parametrize("budget_gb", ["4", "0"])
def test_store_gives_back_what_it_got_from_memory_or_disk(tmp_path, monkeypatch, budget_gb):
    monkeypatch.setenv("ALIGN_MEMORY_GB", budget_gb)
    arrays = _arrays()
    store = TensorStore(tmp_path)
    for k, v in arrays.items():
        store.put(k, v)
    on_disk = sorted(p.name for p in tmp_path.rglob("*.npy"))
    assert len(on_disk) == (0 if budget_gb == "4" else 2)          # 'small' stays in memory under any budget
    arrays["big"][:] = 0                                            # the store kept a copy
    for k in ("small", "ints"):
        np.testing.assert_array_equal(store[k], arrays[k])
    assert not np.any(store["big"] == 0) and store["big"].dtype == np.float64
    store.close()
    assert not list(tmp_path.rglob("*.npy"))


def test_statistics_only_keys(tmp_path):
    store = TensorStore(tmp_path)
    a = np.arange(12.0).reshape(3, 4)
    store.put("a", a, whole=False)
    np.testing.assert_allclose(store.stats("a"), [a.mean(), a.std(), 0.0, 11.0, np.sqrt((a * a).sum()), 12])
    with pytest.raises(KeyError, match="only its statistics"):
        store["a"]
    np.testing.assert_array_equal(tensor_stats(np.zeros(0)), np.zeros(6))
    store.close()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_pass_statistics_against_exact_sums(dtype):
    """tensor_stats and Summaries (one pass, block moments combined pairwise) over many blocks of values with a
    large offset (the case where a sum-of-squares formula cancels): mean, min and max equal NumPy's bit for bit,
    std and L2 norm match math.fsum's correctly rounded sums to 1e-14, and both functions agree exactly."""
    import math

    from align.compare import BLOCK, Summaries
    rng = np.random.default_rng(7)
    a = (1e4 + rng.normal(size=5 * BLOCK + 12345)).astype(dtype)
    b = a + np.asarray(1e-3, dtype=dtype)
    a64 = a.astype(np.float64)
    got = tensor_stats(a)
    assert got[0] == np.mean(a64) and got[2] == a64.min() and got[3] == a64.max() and got[5] == a.size
    mean = math.fsum(a64) / a.size
    assert got[1] == pytest.approx(math.sqrt(math.fsum((a64 - mean) ** 2) / a.size), rel=1e-14)
    assert got[4] == pytest.approx(math.sqrt(math.fsum(a64 * a64)), rel=1e-14)
    summaries = Summaries.of({"a": a, "b": b}, diffs=[("a", "b")], stats=("a", "b"))
    np.testing.assert_array_equal(summaries.stats("a"), got)
    np.testing.assert_array_equal(summaries.stats("b"), tensor_stats(b))


def _inplace_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(inplace=True)).double()


def test_records_are_copies_even_when_the_next_module_works_in_place():
    net, x = _inplace_net(), torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 9, 9)))
    with torch.no_grad():
        conv = net[0](x).numpy().copy()
    seen = {}
    with torch.no_grad(), record(net) as rec:
        net(x)
    assert rec.records()["0"].min() < 0                              # stored: the conv output before ReLU
    np.testing.assert_array_equal(rec.records()["0"], conv)
    with torch.no_grad(), record(net, sink=lambda k, v: seen.setdefault(k, v.min())):
        net(x)
    assert seen["0"] < 0                                             # streamed: read at hook time


def test_streamed_and_spilled_forward_reports_match_the_in_memory_one(tmp_path, monkeypatch):
    """The same pair aligned with every recorded tensor in memory and with every one on disk gives the same
    numbers; a planted difference is caught the same way."""
    import paddle
    torch.manual_seed(0)
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 8, 1))
    paddle.seed(0)
    p = paddle.nn.Sequential(paddle.nn.Conv2D(3, 64, 3, padding=1), paddle.nn.ReLU(), paddle.nn.Conv2D(64, 8, 1))
    for (_, pt), (_, pp) in zip(t.state_dict().items(), p.state_dict().items()):
        pp.set_value(pt.detach().numpy())
    inputs = {"x": np.random.default_rng(1).normal(size=(2, 3, 40, 48))}   # 64x40x48x2 float64: > 1 MB
    summaries = {}
    for dtype in ("float64", "float32"):
        for budget in ("4", "0"):
            monkeypatch.setenv("ALIGN_MEMORY_GB", budget)
            summaries[dtype, budget] = align_forward(t, p, inputs, dtype, tmp_path / f"{dtype}-{budget}")
            assert not list((tmp_path / f"{dtype}-{budget}").rglob(".tensors-*"))   # the spill is cleaned up
        a, b = summaries[dtype, "4"], summaries[dtype, "0"]
        assert a["passed"] and b["passed"], (a["first_divergence"], b["first_divergence"])
        assert json.dumps(a["keys"], sort_keys=True) == json.dumps(b["keys"], sort_keys=True)
        assert list(a["keys"]) == ["0", "1", "2", "output"]
    with paddle.no_grad():
        p[2].bias.set_value(p[2].bias.numpy() + 1e-6)
    monkeypatch.setenv("ALIGN_MEMORY_GB", "0")
    bad = align_forward(t, p, inputs, "float64", tmp_path / "bad")
    assert not bad["passed"] and bad["first_divergence"] == "2"
    assert bad["tensors_saved"]["whole"] == ["2", "output"]


def test_run_side_counts_calls_and_keys_outputs():
    net = _inplace_net()
    run = run_side(net, {"x": np.zeros((1, 3, 5, 5))}, "float64")
    assert run.keys == ["0", "1", "output"] and run.counts == {"0": 1, "1": 1}
    assert list(run.outputs) == ["output"]


def test_tensor_folders_of_killed_runs_are_removed(tmp_path):
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".tensors-{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "x.npy").write_bytes(b"0" * 100)
    store = TensorStore(tmp_path)
    assert not stale.exists() and os.path.isdir(store.folder)
    store.close()
