"""Report folders are written whole and carry their run's id and digests; the gate refuses mixed folders
(align/report_folder.py); temp files of killed runs are cleaned up (twin_common/atomic.py)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from align.compare import compare_runs
from align.gate import gate
from align.report import write_report
from align.report_folder import verify, whole_folder
from twin_common.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def _report(path, value=1.0, plot=False):
    t = {"a": np.full(20, value)}
    return write_report(path, "forward:x", "float64", t, dict(t), compare_runs("float64", t, dict(t)), plot=plot)


def test_every_file_carries_the_run(tmp_path):
    s = _report(tmp_path / "r", plot=True)
    folder = tmp_path / "r"
    assert set(s["files"]) == {"torch.npy", "paddle.npy", "divergence.png", "diff.txt"}
    assert (folder / "diff.txt").read_text().splitlines()[0] == f"run: {s['run']}"
    assert json.loads((folder / "summary.json").read_text())["run"] == s["run"]
    assert verify(folder, s) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no temporary folder left


def test_a_folder_mixed_from_two_runs_fails_the_gate(tmp_path, capsys):
    _report(tmp_path / "a" / "m" / "forward", value=1.0, plot=True)
    _report(tmp_path / "b" / "m" / "forward", value=2.0)
    assert gate(tmp_path / "a") and gate(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "m" / "forward" / "torch.npy", tmp_path / "a" / "m" / "forward" / "torch.npy")
    assert not gate(tmp_path / "a")
    assert "torch.npy is not the file this run wrote" in capsys.readouterr().out
    # a stray plot left by another run next to a report that made none
    shutil.copy(tmp_path / "a" / "m" / "forward" / "divergence.png", tmp_path / "b" / "m" / "forward")
    assert not gate(tmp_path / "b")
    assert "divergence.png comes from another run" in capsys.readouterr().out


def test_an_interrupted_write_leaves_the_old_report_whole(tmp_path):
    folder = tmp_path / "r"
    old = _report(folder)
    (folder / "checkpoint_float64.npz").write_bytes(b"kept")
    with pytest.raises(KeyboardInterrupt):
        with whole_folder(folder) as tmp:
            (tmp / "torch.npy").write_bytes(b"half")
            raise KeyboardInterrupt
    assert verify(folder, old) == [] and (folder / "torch.npy").read_bytes() != b"half"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    new = _report(folder, value=3.0)
    assert new["run"] != old["run"] and verify(folder, new) == []
    assert (folder / "checkpoint_float64.npz").read_bytes() == b"kept"        # not a report file: carried over


CONCURRENT = r"""
import sys
sys.path.insert(0, {root!r})
import numpy as np
from align.compare import compare_runs
from align.report import write_report
for i in range(15):
    t = {{"a": np.full(20000, float({n} * 100 + i))}}
    write_report({out!r}, "forward:x", "float64", t, dict(t), compare_runs("float64", t, dict(t)), plot=i % 2 == 0)
"""


def test_two_runs_into_one_folder_leave_one_whole_report(tmp_path):
    out = str(tmp_path / "m" / "forward")
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT.format(root=str(ROOT), n=n, out=out)])
             for n in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    summary = json.loads((Path(out) / "summary.json").read_text())
    assert verify(out, summary) == [] and gate(tmp_path)
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_temp_files_of_a_killed_writer_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "summary.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".summary.json.{dead.stdout.strip()}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".summary.json.{os.getpid()}.def456.tmp"        # a live writer's: left alone
    live.write_bytes(b"y")
    with atomic_path(target) as tmp:
        Path(tmp).write_text("{}")
    assert not stale.exists() and live.exists() and target.read_text() == "{}"


def test_sigterm_removes_the_temporary_report_folder(tmp_path):
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
            "from align.cli_args import exit_cleanly_on_signals; exit_cleanly_on_signals()\n"
            "from align.report_folder import whole_folder\n"
            f"with whole_folder({str(tmp_path / 'r')!r}) as tmp:\n"
            "    (tmp / 'torch.npy').write_bytes(b'x' * 1000); print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.terminate()
    assert proc.wait(timeout=30) != 0
    assert list(tmp_path.iterdir()) == []
