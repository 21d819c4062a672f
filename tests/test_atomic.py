"""Atomic outputs: a failed write leaves the old file and no temporary behind; new files get open()'s mode."""
import os
import stat

import pytest

from twin_common.atomic import atomic_path, write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_file_has_the_mode_open_would_give(tmp_path, umask_022):
    path = tmp_path / "sub" / "summary.json"
    write_json(path, {"passed": True})
    assert path.read_text() == '{\n  "passed": true\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644       # mkstemp alone would leave 0o600


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "diff.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["diff.txt"]
