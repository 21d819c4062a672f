"""Smoke test of benchmarks/bench_losses.py: the quick run checks ours == loop and prints the table."""
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_losses_quick_runs_and_reports_every_row():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("AP-Loss ", "GHM-C "))]
    assert sorted((row[0], row[-8]) for row in rows) == [("AP-Loss", "paddle"), ("AP-Loss", "torch"),
                                                         ("GHM-C", "paddle"), ("GHM-C", "torch")]
    assert all(row[-2:] == ["n/a", "(quick)"] for row in rows)
    assert "paddle / torch time ratio" in proc.stdout
