"""The CI gate re-checks reports against align/thresholds.json, judges only what it regenerated, and refuses
reports it cannot trust (align/report_folder.py)."""
import json
import os

import numpy as np
import pytest

from align.compare import compare_runs
from align.gate import gate, prune_tensor_logs, regenerate
from align.report import write_report


def _report(path, delta=1e-13, dtype="float64"):
    t = {"a": np.linspace(1.0, 2.0, 50)}
    p = {"a": t["a"] + delta}
    results = compare_runs(dtype, t, p, t, p) if dtype == "float32" else compare_runs(dtype, t, p)
    return write_report(path, "forward:x", dtype, t, p, results)


def _edit_summary(path, **changes):
    summary = json.loads((path / "summary.json").read_text())
    summary.update(changes)
    (path / "summary.json").write_text(json.dumps(summary))
    return summary


def test_gate_rechecks_numbers_instead_of_trusting_the_verdict(tmp_path):
    _report(tmp_path / "float64" / "m" / "forward")
    assert gate(tmp_path)
    lying = tmp_path / "float64" / "n" / "forward"
    s = _report(lying, delta=1e-6)
    assert not s["passed"]
    _edit_summary(lying, passed=True, keys={"a": {**s["keys"]["a"], "passed": True}})   # claims passed
    assert not gate(tmp_path)


def test_numbers_that_are_not_numbers_are_refused(tmp_path, capsys):
    folder = tmp_path / "float64" / "m" / "forward"
    s = _report(folder)
    _edit_summary(folder, keys={"a": {**s["keys"]["a"], "max_rel": "0"}})
    assert not gate(tmp_path)
    _edit_summary(folder, keys=s["keys"], elements_compared="50")
    assert not gate(tmp_path) and "elements_compared is not a number" in capsys.readouterr().out


def test_regenerating_run_ignores_other_reports_but_fails_stale_or_missing(tmp_path):
    old = tmp_path / "retina_r50" / "forward"           # a user's earlier forward_diff run
    _report(old)
    os.utime(old / "summary.json", (0, 0))
    _report(tmp_path / "float64" / "m" / "forward")
    assert gate(tmp_path, since=1.0, expected=["float64/m/forward"])
    os.utime(tmp_path / "float64" / "m" / "forward" / "summary.json", (0, 0))
    assert not gate(tmp_path, since=1.0, expected=["float64/m/forward"])          # stale
    assert not gate(tmp_path, since=0.0, expected=["float64/m/forward", "float64/missing"])


def test_a_timed_out_check_fails_even_over_an_old_passing_report(tmp_path, capsys):
    _report(tmp_path / "float64" / "m" / "forward")
    assert not gate(tmp_path, since=0.0, expected=["float64/m/forward"], timed_out={"float64/m/forward": 5.0})
    assert "timed out after 5 s" in capsys.readouterr().out


def test_regenerate_stops_a_check_at_the_time_limit(tmp_path, monkeypatch):
    from align import manifest
    slow = manifest.Check("forward", "slow", "float64", "float64", "float64/slow/forward")
    monkeypatch.setattr(manifest.Check, "argv", lambda self, out: ["python", "-c", "import time; time.sleep(30)"])
    monkeypatch.setattr(manifest, "checks", lambda: [slow])
    known = manifest.Limit("train", "slow", "float32", "a known limit, printed")        # names must not clash
    monkeypatch.setattr(manifest, "limits", lambda: [known])
    monkeypatch.setenv("ALIGN_GATE_TIMEOUT", "1")
    folders, timed_out = regenerate(str(tmp_path))
    assert folders == [slow.folder] and timed_out == {slow.folder: 1.0}
    other = manifest.Check("train", "slow", "float64", "float64", "float64/slow/train")
    monkeypatch.setattr(manifest, "checks", lambda: [slow, other])
    monkeypatch.setenv("ALIGN_GATE_JOBS", "2")                       # side by side: each still stopped
    folders, timed_out = regenerate(str(tmp_path))
    assert folders == [slow.folder, other.folder] and timed_out == {slow.folder: 1.0, other.folder: 1.0}
    monkeypatch.setenv("ALIGN_GATE_JOBS", "0")
    with pytest.raises(ValueError, match="ALIGN_GATE_JOBS"):
        regenerate(str(tmp_path))
    monkeypatch.setenv("ALIGN_GATE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="ALIGN_GATE_TIMEOUT"):
        regenerate(str(tmp_path))


def test_pruning_tensor_logs_keeps_what_the_gate_reads(tmp_path):
    report = tmp_path / "float64" / "losses" / "focal"
    _report(report)
    (report / "checkpoint_float64.npz").write_bytes(b"x" * 10)
    sizes = sum((report / n).stat().st_size for n in ("torch.npy", "paddle.npy", "checkpoint_float64.npz"))
    assert prune_tensor_logs(tmp_path / "float64" / "losses") == sizes
    assert sorted(p.name for p in report.iterdir()) == ["diff.txt", "summary.json"]
    assert gate(tmp_path)


def test_checks_that_compare_nothing_fail(tmp_path):
    from align.compare import check_float64
    inf = np.full(5, np.inf)
    assert not check_float64(inf, inf)["passed"]                           # all non-finite: nothing compared
    mixed = check_float64(np.array([1.0, np.inf, np.nan]), np.array([1.0, np.inf, np.nan]))
    assert mixed["passed"] and mixed["nonfinite"] == 2 and mixed["compared"] == 1
    assert not check_float64(np.array([1.0, np.inf]), np.array([1.0, 2.0]))["passed"]
    empty = {"a": np.zeros((0, 3)), "b": np.zeros(0)}
    s = write_report(tmp_path / "e", "forward:x", "float64", empty, dict(empty), compare_runs("float64", empty, empty))
    assert all(st["passed"] for st in s["keys"].values())                  # each empty key agrees, yet
    assert not s["passed"] and s["elements_compared"] == 0                  # the check proved nothing
    assert not gate(tmp_path)


def test_float32_judges_paddle_against_the_nearest_torch_run_and_the_gate_agrees():
    """torch's default kernel may be legitimately much less accurate than Paddle's (oneDNN under AVX2 at PP-YOLOE's
    pred_reg: 8x): Paddle is judged against the nearest of torch's runs; a noisy Paddle still fails."""
    from align.compare import check_float32, recheck
    rng = np.random.default_rng(0)
    ref = rng.normal(size=1000)
    torch32 = ref + rng.normal(scale=1e-5, size=1000)          # torch's default: far less accurate
    variant32 = ref + rng.normal(scale=1e-8, size=1000)        # torch's other backend
    paddle32 = ref + rng.normal(scale=1e-8, size=1000)
    stats = check_float32(torch32, paddle32, ref, ref, torch_variants=[(variant32, ref)])
    assert stats["passed"] and stats["nearest_torch_run"] == "variant" and recheck(stats) is None
    assert not check_float32(torch32, paddle32, ref, ref)["passed"]              # against the default alone
    assert recheck({**stats, "max_abs_torch_variant": stats["max_abs"]}) is not None  # a report that lies
    noisy = ref + rng.normal(scale=1e-3, size=1000)            # a Paddle float32 defect: far from every torch run
    assert not check_float32(torch32, noisy, ref, ref, torch_variants=[(variant32, ref)])["passed"]
