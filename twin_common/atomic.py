"""Atomic file output: a crash or a bad input never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator


def umask() -> int:
    """The process umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode():
    """What open() would give a new file: 0o666 less the process umask (mkstemp's files are 0o600)."""
    return 0o666 & ~umask()


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (ours counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: alive
        return True
    return True


def remove_dead(folder: str | os.PathLike, pattern: str) -> None:
    """Remove the entries of `folder` (files or folders) whose whole name matches the regex `pattern` and whose
    PID (its group 'pid') is not a live process: temporaries of runs killed before they could clean up."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        found = re.fullmatch(pattern, name)
        if found and not pid_alive(int(found["pid"])):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename.

    `suffix` keeps writers that append an extension (np.save adds '.npy') pointed at the same file. The temp
    name carries our PID, so the next write to the same path removes what a killed process left.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_dead(folder, re.escape(f".{os.path.basename(path)}.") + r"(?P<pid>\d+)\..*\.tmp.*")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")
