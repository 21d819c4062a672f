"""A report folder is written whole: into a hidden temporary sibling, then renamed into place, so an
interrupted run, or two runs into one folder, never leave files from two runs side by side.

Every report carries a run id (summary.json "run", the first line of diff.txt) and summary.json the SHA-256
of every other file written (`files`); the gate (align/gate.py) refuses a folder whose files disagree with
its summary. Files in the old folder that are not report files (a training checkpoint kept for --resume)
move into the new one. Temporary folders of dead runs (the owner's PID is in the name) are removed.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from twin_common.atomic import remove_dead, umask

REPORT_FILES = ("summary.json", "diff.txt", "torch.npy", "paddle.npy", "numpy.npy", "divergence.png", "curves.png")
TENSOR_LOGS = ("torch.npy", "paddle.npy", "numpy.npy")      # the gate may prune these once a check passed
_TMP = ".report-"


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def whole_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes out_dir in one rename (the old one, if any, is
    moved aside first and removed after, its non-report files carried over); on failure it is removed and
    out_dir is left as it was."""
    out_dir = Path(out_dir)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_dead(parent, r"\..*" + re.escape(_TMP) + r"(?P<pid>\d+)-.*")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{_TMP}{os.getpid()}-", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())
        for attempt in range(20):       # another run may be swapping the same folder: take turns
            old = None
            if out_dir.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{_TMP}{os.getpid()}-old-", dir=parent))
                try:
                    os.replace(out_dir, old / "report")
                except FileNotFoundError:
                    pass
                _carry_over(old / "report", tmp)
            try:
                os.replace(tmp, out_dir)
            except OSError:
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
                time.sleep(0.05 * (attempt + 1))
                continue
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return
        raise OSError(f"could not move the report into {out_dir}: another process keeps writing there")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _carry_over(old: Path, new: Path) -> None:
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name not in REPORT_FILES and not entry.name.startswith(".") and not (new / entry.name).exists():
            os.replace(entry, new / entry.name)


def verify(folder: str | os.PathLike, summary: dict) -> list[str]:
    """What is wrong with a report folder against its summary: files missing or changed since the run wrote
    them, report files the run did not write, a diff.txt of another run. [] when the folder is whole."""
    folder, problems = Path(folder), []
    files, run = summary.get("files"), summary.get("run")
    if not isinstance(files, dict) or not isinstance(run, str):
        return ["summary.json has no run id or file digests (written by an older version, or not by this tool)"]
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            if name not in TENSOR_LOGS:
                problems.append(f"{name} is missing")
        elif sha256(path) != digest:
            problems.append(f"{name} is not the file this run wrote")
    strays = [n for n in REPORT_FILES if n != "summary.json" and n not in files and (folder / n).exists()]
    problems += [f"{n} comes from another run" for n in strays]
    return problems
