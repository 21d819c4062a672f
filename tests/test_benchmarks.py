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
