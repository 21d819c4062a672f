"""The float32 rule still catches real precision defects, at the layer they are in, on any CPU setting.

Defects are planted (align/defects.py) in one torch or one Paddle layer of resnet50 and retina_r50, in the
forward (the layer's input) and in the backward (the gradient flowing into the layer), as TF32 truncation,
a bfloat16 round trip and a float16 round trip, and each float32 check must fail with its first
divergence at that layer, under torch's default oneDNN ISA and under ONEDNN_MAX_CPU_ISA=AVX2 (the cap
must be set before oneDNN starts, hence one subprocess per cap).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from align.defects import degrade, plant
from tests.conftest import ROOT

CASES = [(model, layer, shape, where, side, kind)
         for model, layer, shape in (("resnet50", "layer3.0.conv2", (1, 3, 64, 80)),
                                     ("retina_r50", "neck.p6_conv", (1, 3, 72, 104)))
         for where in ("forward", "backward") for side in ("torch", "paddle") for kind in ("tf32", "bf16", "fp16")]

RUNNER = """
import json, sys, tempfile
sys.path.insert(0, {root!r})
from align.runtime import configure_frameworks
configure_frameworks()
from align.defects import planted_check
for model, layer, shape, where, side, kind in json.loads(sys.argv[1]):
    with tempfile.TemporaryDirectory() as out:
        s = planted_check(model, side, layer, kind, where, out, tuple(shape))
    first = s["first_divergence"]
    print(json.dumps({{"case": [model, where, side, kind], "passed": s["passed"], "first": first,
                      "ratio": s["keys"][first]["ratio"] if first else None,
                      "float64_max_rel": s["keys"][first].get("float64_max_rel") if first else None}}), flush=True)
"""


def test_degrade_matches_each_format():
    x = np.array([1.0 + 2.0 ** -11, 1.0 + 2.0 ** -9 + 2.0 ** -20, -3.14159274, 65504.0 * 2, 1e-30], np.float32)
    # TF32 keeps 10 mantissa bits, truncated
    assert degrade(x, "tf32")[0] == 1.0 and degrade(x, "tf32")[1] == np.float32(1.0 + 2.0 ** -9)
    # bfloat16 keeps 7 mantissa bits, rounded to nearest even: 1 + 2^-9 + tiny rounds down to 1
    assert degrade(x, "bf16")[1] == 1.0 and degrade(x, "bf16")[2] == np.float32(-3.140625)
    assert degrade(np.float32([1.0 + 2.0 ** -8]), "bf16")[0] == 1.0          # tie to even
    assert degrade(np.float32([1.0 + 3 * 2.0 ** -8]), "bf16")[0] == np.float32(1.0 + 2.0 ** -6)   # tie up
    # float16: numpy's rounding, overflow to inf
    assert degrade(x, "fp16")[2] == np.float32(np.float16(-3.14159274)) and np.isinf(degrade(x, "fp16")[3])
    rel = np.abs(degrade(x[:3], "tf32") - x[:3]) / np.abs(x[:3])
    assert rel.max() < 2.0 ** -10


def test_plant_touches_float32_only_and_is_removed():
    import torch
    conv = torch.nn.Conv2d(2, 2, 1, bias=False)
    model = torch.nn.Sequential(conv)
    x64 = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    clean32 = model.float()(x64.float())
    with plant(model, "0", "bf16"):
        planted32 = model(x64.float())
        model.double()
        planted64 = model(x64)
        model.float()
    assert not torch.equal(planted32, clean32)                     # float32: degraded
    assert torch.equal(planted64, model.double()(x64))             # float64: untouched
    model.float()
    assert torch.equal(model(x64.float()), clean32)                # removed after the block
    with pytest.raises(ValueError, match="no submodule"):
        with plant(model, "nope", "tf32"):
            pass


@pytest.mark.parametrize("isa", ["default", "AVX2"])
def test_planted_float32_defects_fail_at_their_layer(isa):
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    res = subprocess.run([sys.executable, "-c", RUNNER.format(root=str(ROOT)), json.dumps(CASES)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(CASES)
    for (model, layer, _, where, side, kind), row in zip(CASES, rows):
        label = f"{model} {where} {side} {kind}: {row}"
        assert not row["passed"], label
        if where == "forward":
            assert row["first"].startswith(layer), label
        else:     # the planted layer's parameter gradient, or the gradient at its output (outgrad.<layer>[#k])
            first = row["first"]
            assert first.startswith(f"grad.{layer}.") or first.split("#")[0] == f"outgrad.{layer}", label
        assert row["ratio"] > 5, label                   # not a marginal catch: at least 5x the tolerance
        assert row["float64_max_rel"] <= 1e-9, label     # float32-only: the float64 twins still agree


def test_paddle_float32_sum_defect_is_still_there():
    """Paddle 3.3.1's CPU float32 sum of RetinaNet-like focal-loss terms (7704 anchors x 20 classes, prior
    logits, 0.2% positives) is several times further from the exact sum than torch's cascade sum, which
    is why the Paddle twin sums losses with a float64 accumulator (paddle_impl/losses/reduction.py)."""
    import paddle
    import torch

    from paddle_impl.losses.reduction import accurate_sum
    rng = np.random.default_rng(0)
    x = rng.normal(-4.6, 1.0, size=(7704, 20))
    t = (rng.random((7704, 20)) < 0.002).astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    ce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    terms = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - (p * t + (1 - p) * (1 - t))) ** 2).astype(np.float32)
    exact = terms.astype(np.float64).sum()
    paddle_err = abs(float(paddle.to_tensor(terms).sum()) - exact)
    torch_err = abs(float(torch.from_numpy(terms).sum()) - exact)
    ulp = float(np.spacing(np.float32(exact)))
    assert paddle_err > 3 * max(torch_err, ulp / 2), (paddle_err, torch_err, ulp)
    assert abs(float(accurate_sum(paddle.to_tensor(terms))) - exact) <= ulp / 2     # correctly rounded
