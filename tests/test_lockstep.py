"""align.lockstep: forward passes in lockstep give the report of the passes one after the other (keys, numbers,
first divergence, saved tensors), whatever the two execution orders, with keys only one side has, with in-place
modules, and on disk beyond the memory budget; an exception on either side ends every side and is raised."""
import json
import threading

import numpy as np
import paddle
import pytest
import torch

from align import forward
from align import lockstep as ls
from align.forward import align_forward


class _Torch(torch.nn.Module):
    def __init__(self, extra=False):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(inplace=True))   # a.0 overwritten
        self.b = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.shared = torch.nn.Conv2d(8, 4, 1)                                               # called twice
        self.torch_only = torch.nn.Identity() if extra else None

    def forward(self, x):
        x = self.stem(x)
        ya, yb = self.a(x), self.b(x)
        if self.torch_only is not None:
            ya = self.torch_only(ya)
        pa, pb = self.shared(ya), self.shared(yb)
        return {"pa": pa, "pb": pb, "labels": torch.argmax(pa + pb, dim=1)}


class _Paddle(paddle.nn.Layer):
    def __init__(self, swap=False, extra=False, fail=None):
        super().__init__()
        self.stem = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.a = paddle.nn.Sequential(paddle.nn.Conv2D(8, 8, 1), paddle.nn.ReLU())
        self.b = paddle.nn.Sequential(paddle.nn.Conv2D(8, 8, 3, padding=1), paddle.nn.ReLU())
        self.shared = paddle.nn.Conv2D(8, 4, 1)
        self.paddle_only = paddle.nn.Identity() if extra else None
        self.swap, self.fail = swap, fail

    def forward(self, x):
        x = self.stem(x)
        if self.fail == "b":
            raise RuntimeError("boom in the Paddle twin")
        if self.swap:                                   # the branches in the other order
            yb = self.b(x)
            ya = self.a(x)
        else:
            ya, yb = self.a(x), self.b(x)
        if self.paddle_only is not None:
            yb = self.paddle_only(yb)
        pa, pb = self.shared(ya), self.shared(yb)
        return {"pa": pa, "pb": pb, "labels": paddle.argmax(pa + pb, axis=1)}


def _pair(swap=False, extra=False, fail=None, planted=0.0):
    torch.manual_seed(0)
    t = _Torch(extra)
    paddle.seed(0)
    p = _Paddle(swap, extra, fail)
    state = p.state_dict()
    for k, v in t.state_dict().items():
        state[k].set_value(v.detach().numpy().astype(state[k].numpy().dtype))
    if planted:
        with paddle.no_grad():
            p.b[0].bias.set_value(p.b[0].bias.numpy() + planted)
    inputs = {"x": np.random.default_rng(1).normal(size=(2, 3, 24, 28))}   # 8x24x28x2 float64: > 64k elements
    return t, p, inputs


FIELDS = ("passed", "first_divergence", "keys", "unmatched", "tensors_saved", "num_keys", "elements_compared",
          "worst_passed_ratio")


def _same(a, b):
    for field in FIELDS:
        assert json.dumps(a[field], sort_keys=True) == json.dumps(b[field], sort_keys=True), field
    assert list(a["keys"]) == list(b["keys"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", ["same order", "other order and one-sided keys", "planted", "planted, all saved"])
def test_lockstep_gives_the_report_of_the_runs_one_after_the_other(tmp_path, dtype, case, monkeypatch):
    kwargs = {"same order": {}, "other order and one-sided keys": {"swap": True, "extra": True},
              "planted": {"swap": True, "planted": 1e-3}, "planted, all saved": {"planted": 1e-3}}[case]
    save = "all" if case.endswith("all saved") else "failing"
    monkeypatch.setenv("ALIGN_MEMORY_GB", "0" if "order" in case else "4")    # the waiting copies go to disk
    summaries = {}
    for lockstep in (False, True):
        t, p, inputs = _pair(**kwargs)
        out = tmp_path / f"{lockstep}"
        summaries[lockstep] = align_forward(t, p, inputs, dtype, out, save_tensors=save, lockstep=lockstep)
        assert not list(out.rglob(".tensors-*"))                                  # the spill is cleaned up
        assert next(t.parameters()).dtype == torch.float32 or dtype == "float64"
    _same(summaries[False], summaries[True])
    s = summaries[True]
    if case.startswith("planted"):
        assert not s["passed"] and s["first_divergence"] == "b.0"
        assert "b.0" in s["tensors_saved"]["whole"]
    elif case == "other order and one-sided keys":
        assert s["unmatched"]["torch_only"] == ["torch_only"] and s["unmatched"]["paddle_only"] == ["paddle_only"]
        assert {"shared#0", "shared#1", "a.0", "output.labels"} <= set(s["keys"])
        assert s["keys"]["a.0"]["passed"]          # torch's a.0 was copied before its in-place ReLU ran
    else:
        assert s["passed"], s["first_divergence"]


def test_lockstep_is_the_default_and_can_be_turned_off(monkeypatch):
    assert forward.lockstep_default()
    monkeypatch.setenv("ALIGN_LOCKSTEP", "0")
    assert not forward.lockstep_default()
    monkeypatch.setenv("ALIGN_LOCKSTEP", "yes")
    with pytest.raises(ValueError, match="ALIGN_LOCKSTEP"):
        forward.lockstep_default()


def _in_time(fn, seconds=120):
    """fn() in a thread; its exception, or a failure if it is still running after `seconds` (a hang)."""
    box = {}

    def body():
        try:
            box["value"] = fn()
        except BaseException as e:        # noqa: BLE001
            box["error"] = e
    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), "align_forward hangs"
    return box


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("side", ["paddle", "torch"])
def test_an_exception_on_either_side_is_raised_without_hanging(tmp_path, dtype, side, monkeypatch):
    t, p, inputs = _pair(fail="b" if side == "paddle" else None)
    if side == "torch":
        def broken(module, args, output):
            raise ValueError("boom in the torch model")
        t.b.register_forward_hook(broken)
    got = _in_time(lambda: align_forward(t, p, inputs, dtype, tmp_path, lockstep=True))
    assert isinstance(got.get("error"), RuntimeError if side == "paddle" else ValueError), got
    assert "boom" in str(got["error"])
    assert not [th for th in threading.enumerate() if th.name.startswith("align-") and "compare" not in th.name]
    assert torch.backends.mkldnn.enabled                  # the variant's kernel switch is undone
    assert not list(tmp_path.rglob(".tensors-*"))


class _Clash(torch.nn.Module):
    """A module whose tuple output's subkeys ('blk.0', 'blk.1') are also the names of its children."""

    def __init__(self):
        super().__init__()
        self.blk = _Blk()

    def forward(self, x):
        return self.blk(x)[0]


class _Blk(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("0", torch.nn.Conv2d(3, 4, 1))
        self.add_module("1", torch.nn.Conv2d(3, 4, 1))

    def forward(self, x):
        return getattr(self, "0")(x), getattr(self, "1")(x) * 2


class _PClash(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.blk = _PBlk()

    def forward(self, x):
        return self.blk(x)[0]


class _PBlk(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.add_sublayer("0", paddle.nn.Conv2D(3, 4, 1))
        self.add_sublayer("1", paddle.nn.Conv2D(3, 4, 1))

    def forward(self, x):
        return getattr(self, "0")(x), getattr(self, "1")(x) * 2


def test_keys_that_clash_by_name_fall_back_to_the_runs_one_after_the_other(tmp_path, monkeypatch):
    torch.manual_seed(0)
    t, p = _Clash(), _PClash()
    state = p.state_dict()
    for k, v in t.state_dict().items():
        state[k].set_value(v.detach().numpy())
    inputs = {"x": np.random.default_rng(0).normal(size=(1, 3, 5, 6))}
    calls = []
    original = forward._float64
    monkeypatch.setattr(forward, "_float64", lambda *a: calls.append(1) or original(*a))
    a = align_forward(t, p, inputs, "float64", tmp_path / "a", lockstep=True)
    assert calls == [1]                                   # lockstep saw the clash and ran them one after the other
    b = align_forward(t, p, inputs, "float64", tmp_path / "b", lockstep=False)
    _same(a, b)


def test_baton_rendezvous_orders_and_one_sided_keys():
    """Two fake sides delivering in different orders, one with a key the other never has: every key completes
    with what each side had, the waiting values are copies made when their side ran on."""
    done = {}
    rendezvous = ls.Rendezvous(["t", "p"], lambda key, got: done.setdefault(key, {s: v.copy() for s, v in got.items()}))
    baton = ls.Baton(["t", "p"])
    orders = {"t": ["k1", "k2", "k3", "t_only"], "p": ["k3", "k1", "k2"]}

    def job_for(side):
        def job(pass_on):
            value = np.zeros(3)
            for key in orders[side]:
                value[:] = len(key) + (side == "p")       # one buffer, overwritten in place after each hand-off
                rendezvous.deliver(side, key, value)
                pass_on()
                rendezvous.resume(side)
            rendezvous.end(side)
            return side
        return job
    assert ls.run({s: job_for(s) for s in orders}, baton) == {"t": "t", "p": "p"}
    rendezvous.close()
    assert set(done) == {"k1", "k2", "k3", "t_only"} and list(done["t_only"]) == ["t"]
    for key in ("k1", "k2", "k3"):
        assert done[key]["t"][0] == len(key) and done[key]["p"][0] == len(key) + 1
    assert set(baton.active) == {"t", "p"} and all(v >= 0 for v in baton.active.values())


def test_baton_error_stops_every_side():
    baton, reached = ls.Baton(["a", "b", "c"]), []

    def ok(pass_on):
        for _ in range(100):
            reached.append(1)
            pass_on()

    def bad(pass_on):
        pass_on()
        raise KeyError("side b failed")
    box = _in_time(lambda: ls.run({"a": ok, "b": bad, "c": ok}, baton), 30)
    assert isinstance(box.get("error"), KeyError)
    assert len(reached) < 10                              # the others stopped at their next module call
