"""Smoke test of benchmarks/bench_losses.py: the quick run checks ours == loop and prints the table."""
import subprocess
import sys

from tests.conftest import ROOT

STOCK = ("torch-stock", "paddle-stock")


def test_bench_losses_quick_runs_and_reports_every_row():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        if line.startswith(("AP-Loss ", "GHM-C ")):
            framework = next(word for word in line.split() if word in STOCK + ("torch", "paddle"))
            rows[line.split()[0], framework] = line
    assert sorted(rows) == [("AP-Loss", "paddle"), ("AP-Loss", "torch"), ("GHM-C", "paddle"),
                            ("GHM-C", "paddle-stock"), ("GHM-C", "torch"), ("GHM-C", "torch-stock")]
    assert all(line.endswith("n/a (quick)") for key, line in rows.items() if key[1] not in STOCK)
    assert all(rows["GHM-C", name].endswith("fallback, not gated") for name in STOCK)
    assert "paddle / torch time ratio" in proc.stdout


def test_bench_align_quick_measures_both_dtypes():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_align.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [r[1] for r in rows] == ["float64", "float32"]
    for r in rows:
        align_s, plain_s, ratio = float(r[2]), float(r[3]), float(r[4])
        # the seconds are printed to 0.1 s and the ratio to 0.01: the ratio of the unrounded times lies within
        # the seconds' rounding, give or take the ratio's own half-hundredth
        assert align_s > 0 and plain_s > 0.05
        low, high = (align_s - 0.05) / (plain_s + 0.05), (align_s + 0.05) / (plain_s - 0.05)
        assert low - 0.005 <= ratio <= high + 0.005
        assert float(r[7].rstrip("M")) < 5           # statistics, not tensors, for passing keys
    assert "torch's other kernels" in " ".join(rows[1])   # float32's plain passes include that fifth pass


def test_bench_assigners_quick_times_both_assigners_in_both_frameworks():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_assigners.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {tuple(line.split()[:2]) for line in proc.stdout.splitlines() if line.startswith(("ATSS ", "TAL "))}
    assert rows == {("ATSS", "torch"), ("ATSS", "paddle"), ("TAL", "torch"), ("TAL", "paddle")}
    assert "paddle / torch time ratio" in proc.stdout


def test_bench_libra_quick_times_sampling_and_rpn_targets_in_both_frameworks():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_libra.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {tuple(line.split()[:3]): line for line in proc.stdout.splitlines()
            if line.startswith(("R-CNN sampling ", "RPN targets "))}
    assert sorted(rows) == [("R-CNN", "sampling", "paddle"), ("R-CNN", "sampling", "torch"),
                            ("RPN", "targets", "paddle"), ("RPN", "targets", "torch")]
    assert all(line.endswith("n/a (quick)") for line in rows.values())
    assert "twins == loop checked" in proc.stdout
