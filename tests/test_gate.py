"""The CI gate re-checks reports against align/thresholds.json and judges only what it regenerated."""
import json
import os

from align.gate import gate


def _summary(path, dtype="float64", max_rel=1e-12, passed=True):
    path.mkdir(parents=True, exist_ok=True)
    keys = {"a": {"max_abs": max_rel, "mean_abs": max_rel, "max_rel": max_rel, "passed": passed, "rule": "float64"}}
    (path / "summary.json").write_text(json.dumps({"check": "forward:x", "passed": passed, "dtype": dtype,
                                                   "first_divergence": None, "keys": keys}))


def test_gate_rechecks_numbers_instead_of_trusting_the_verdict(tmp_path):
    _summary(tmp_path / "float64" / "m" / "forward")
    assert gate(tmp_path)
    _summary(tmp_path / "float64" / "n" / "forward", max_rel=1e-6)   # claims passed, out of threshold
    assert not gate(tmp_path)


def test_regenerating_run_ignores_other_reports_but_fails_stale_or_missing(tmp_path):
    old = tmp_path / "retina_r50" / "forward"           # a user's earlier forward_diff run
    _summary(old)
    os.utime(old / "summary.json", (0, 0))
    _summary(tmp_path / "float64" / "m" / "forward")
    assert gate(tmp_path, since=1.0, expected=["float64/m/forward"])
    os.utime(tmp_path / "float64" / "m" / "forward" / "summary.json", (0, 0))
    assert not gate(tmp_path, since=1.0, expected=["float64/m/forward"])          # stale
    assert not gate(tmp_path, since=0.0, expected=["float64/m/forward", "float64/missing"])


def test_pruning_tensor_logs_keeps_what_the_gate_reads(tmp_path):
    import numpy as np

    from align.gate import prune_tensor_logs
    report = tmp_path / "float64" / "losses" / "focal"
    _summary(report)
    (report / "diff.txt").write_text("ok\n")
    np.save(report / "torch.npy", np.zeros(1000))
    np.save(report / "paddle.npy", np.zeros(1000))
    (report / "checkpoint_float64.pkl").write_bytes(b"x" * 10)
    assert prune_tensor_logs(tmp_path / "float64" / "losses") == 2 * (8000 + 128) + 10
    assert sorted(p.name for p in report.iterdir()) == ["diff.txt", "summary.json"]
    assert gate(tmp_path)
