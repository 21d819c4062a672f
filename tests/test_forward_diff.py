"""forward_diff: float64 semantics, float32 against the noise floor, reprod_log compatibility, divergence."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from reprod_log import ReprodDiffHelper

from align import compare
from align.forward_diff import run
from tests.conftest import ROOT

SMALL = (1, 3, 72, 104)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_retina_forward_aligns(dtype, tmp_path):
    summary = run("retina_r50", dtype, str(tmp_path), input_shape=SMALL)
    assert summary["passed"], summary["first_divergence"]
    keys = summary["keys"]
    assert len(keys) >= 20 and not any(summary["unmatched"].values())
    for must in ("backbone.layer4", "neck.4", "bbox_head.retina_cls#0", "output.cls_scores.P7",
                 "output.anchors.P3", "output.detections.0.boxes"):
        assert must in keys, must
    if dtype == "float64":
        assert max(k["max_rel"] for k in keys.values()) <= 1e-9
    else:
        integer = ("count", "labels", "anchor_index")
        assert all("tolerance_abs" in v for k, v in keys.items() if not k.endswith(integer))
        conv = keys["backbone.layer4"]
        assert 0 < conv["max_abs"] <= conv["tolerance_abs"]        # float32 differs, by rounding only
    # the logs are reprod_log files with identical key sets that ReprodDiffHelper can compare
    helper = ReprodDiffHelper()
    out = tmp_path / "retina_r50" / "forward"
    t, p = helper.load_info(str(out / "torch.npy")), helper.load_info(str(out / "paddle.npy"))
    assert set(t) == set(p) == set(keys)
    helper.compare_info(t, p)
    helper.report(path=str(tmp_path / "reprod_diff.txt"))
    if dtype == "float64":          # reprod_log's own verdict (max diff <= 1e-6) agrees with ours
        assert "diff check passed" in (tmp_path / "reprod_diff.txt").read_text()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["passed"] is True and saved["dtype"] == dtype and saved["first_divergence"] is None


def test_broken_twin_is_caught_at_the_first_diverging_module(tmp_path, monkeypatch):
    from paddle_impl.necks.fpn import FPN
    original = FPN.__init__

    def relu_before_p7(self, *a, **kw):      # a port that follows torchvision's P7 instead of the GHM paper
        original(self, *a, **kw)
        self.relu_before_p7 = True
    monkeypatch.setattr(FPN, "__init__", relu_before_p7)
    summary = run("retina_r50", "float64", str(tmp_path), input_shape=SMALL)
    assert not summary["passed"]
    assert summary["first_divergence"] == "neck.p7_conv"
    assert summary["keys"]["neck.p6_conv"]["passed"]


def test_cli_with_torchvision_weights_and_exit_status(tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    cmd = [sys.executable, str(ROOT / "align" / "forward_diff.py"), "--model", "resnet50", "--weights", str(path),
           "--dtype", "float64", "--out", str(tmp_path / "rep"), "--input-shape", "1,3,64,64"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((tmp_path / "rep" / "resnet50" / "forward" / "summary.json").read_text())
    assert summary["passed"] and summary["keys"]["output"]["max_rel"] <= 1e-9
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    bad_cmd = [sys.executable, str(ROOT / "align" / "forward_diff.py"), "--model", "resnet50",
               "--weights", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "rep2")]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "missing keys" in bad.stderr and "conv1.weight" in bad.stderr
    listing = subprocess.run([sys.executable, str(ROOT / "align" / "forward_diff.py"), "--list"],
                             capture_output=True, text=True, cwd=ROOT)
    assert "resnet50" in listing.stdout and "retina_r50" in listing.stdout


def test_float32_rule_rejects_a_sloppy_framework():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=1000)
    t32 = exact.astype(np.float32)
    good = (exact + rng.normal(scale=1e-7, size=1000)).astype(np.float32)
    assert compare.check_float32(t32, good, exact, exact)["passed"]
    # a framework that rounds to ~bfloat16 inside: its own noise is large, the other's is not
    sloppy = (np.round(exact * 256) / 256).astype(np.float32)
    res = compare.check_float32(t32, sloppy, exact, exact)
    assert not res["passed"] and res["noise_paddle"] > 100 * res["noise_torch"]


def test_float64_rule_and_shape_mismatch():
    a = np.linspace(-2, 2, 50)
    assert compare.check_float64(a, a * (1 + 5e-10))["passed"]
    assert not compare.check_float64(a, a * (1 + 5e-9))["passed"]
    res = compare.check_float64(a, a[:-1])
    assert not res["passed"] and res["shape_mismatch"] == [[50], [49]]
    assert compare.check_exact(np.array([1, 2]), np.array([1, 3]))["passed"] is False
