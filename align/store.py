"""Where recorded tensors wait to be compared: in memory up to a budget, then on disk, read back one at a time.

A forward check records every module's output of up to five runs (float32: torch in float64, float32 and with
its other kernels, Paddle in float32 and float64). At real image sizes they do not fit in memory (retina_r50
float64 at 2x3x800x1344: 15 GB per run). The tools keep only the runs a later run is compared against
(align/forward.py compares the last run as it arrives); a TensorStore holds each of them, in memory while the
process-wide budget lasts (ALIGN_MEMORY_GB, default 4) and beyond it as one .npy per tensor in a temporary
folder next to the report, handed back as a fresh array. A key may also keep only its statistics
(`put(..., whole=False)`): what a report keeps of a tensor it does not save whole. Runs in lockstep
(align.lockstep) hold each output only until its counterparts arrive, in buffers of a BufferPool that are
handed out again: on a VM, first touch of fresh memory costs 1-2.5 s per GB, reused memory nothing.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from align.compare import _scratch, block_moments, block_tree, combine_moments, moments_stats
from twin_common.atomic import remove_dead

STATS_FIELDS = ("mean", "std", "min", "max", "l2_norm", "size")
IN_MEMORY_BYTES = 1 << 20          # tensors below 1 MB stay in memory whatever the budget
_HELD = {"bytes": 0}               # bytes every store (and lockstep hold) of this process holds in memory
_HELD_LOCK = threading.Lock()


def memory_budget() -> int:
    """Bytes the stores of this process may hold in memory (ALIGN_MEMORY_GB, default 4)."""
    value = os.environ.get("ALIGN_MEMORY_GB", "4")
    try:
        gb = float(value)
    except ValueError:
        raise ValueError(f"ALIGN_MEMORY_GB must be a number of GB, got {value!r}") from None
    return int(gb * (1 << 30))


def reserve(nbytes: int) -> bool:
    """Count nbytes against the process-wide memory budget if they fit in it (or are below IN_MEMORY_BYTES);
    False (nothing counted) when they do not: keep them on disk. release() gives them back."""
    with _HELD_LOCK:
        if nbytes >= IN_MEMORY_BYTES and _HELD["bytes"] + nbytes > memory_budget():
            return False
        _HELD["bytes"] += nbytes
        return True


def release(nbytes: int) -> None:
    with _HELD_LOCK:
        _HELD["bytes"] -= nbytes


class BufferPool:
    """Buffers for short-lived copies of large arrays, handed out again once given back (best fit, at most twice
    the size asked for), keeping up to `keep_bytes` of them free. Only what empty() handed out comes back."""

    def __init__(self, keep_bytes: int = 1 << 30, min_bytes: int = IN_MEMORY_BYTES):
        self.keep_bytes, self.min_bytes = keep_bytes, min_bytes
        self._free: list[np.ndarray] = []
        self._lent: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def empty(self, shape: tuple, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < self.min_bytes:
            return np.empty(shape, dtype)
        with self._lock:
            fits = [b for b in self._free if nbytes <= b.nbytes <= 2 * nbytes]
            buf = min(fits, key=lambda b: b.nbytes) if fits else None
            if buf is not None:
                self._free = [b for b in self._free if b is not buf]
        if buf is None:
            buf = np.empty(nbytes, np.uint8)
        with self._lock:
            self._lent[id(buf)] = buf
        return buf[:nbytes].view(dtype).reshape(shape)

    def copy(self, array: np.ndarray) -> np.ndarray:
        out = self.empty(array.shape, array.dtype)
        np.copyto(out, array)
        return out

    def give_back(self, array: np.ndarray) -> None:
        """Hand back an array from empty(); nothing may use it afterwards. Anything else is left alone."""
        root = array
        while isinstance(root.base, np.ndarray):
            root = root.base
        with self._lock:
            buf = self._lent.pop(id(root), None)
            if buf is None or buf is not root:
                return
            self._free.append(buf)
            while sum(b.nbytes for b in self._free) > self.keep_bytes:
                self._free.remove(max(self._free, key=lambda b: b.nbytes))

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


def tensor_stats(value: np.ndarray) -> np.ndarray:
    """What a report keeps of a tensor it does not save whole: mean, std, min, max, L2 norm, size (float64).

    One pass in cache-sized blocks (align.compare.block_tree, block_moments), no full-size temporary and no
    float64 copy of a float32 tensor; mean, min and max are bit for bit NumPy's over the whole float64 array,
    the std and the L2 norm within a few ulp of NumPy's (align.compare.Summaries gives the same numbers)."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        a = np.asarray(a, dtype=np.float64)
    a = a.reshape(-1)
    if not a.size:
        return np.zeros(len(STATS_FIELDS))

    def first(lo, hi):
        block = a[lo:hi]
        if block.dtype != np.float64:
            buf = _scratch(hi - lo)
            np.copyto(buf, block, casting="unsafe")
            block = buf
        return block.min(), block.max(), block_moments(block)
    return moments_stats(*block_tree(a.size, first, lambda x, y: (min(x[0], y[0]), max(x[1], y[1]),
                                                                  combine_moments(x[2], y[2]))))


class _Stats:
    """A key whose tensor was not kept, only its tensor_stats."""

    def __init__(self, stats):
        self.stats = stats


class TensorStore(Mapping):
    """An ordered {key: ndarray}; arrays beyond the memory budget live on disk under `folder` (a fresh temp
    folder inside it); folder None keeps every array in memory."""

    def __init__(self, folder: str | os.PathLike | None = None):
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            remove_dead(folder, r"\.tensors-(?P<pid>\d+)-.*")     # what killed runs left
            folder = tempfile.mkdtemp(prefix=f".tensors-{os.getpid()}-", dir=folder)
        self.folder = folder
        self._items: OrderedDict = OrderedDict()
        self._held = 0

    def put(self, key: str, array: np.ndarray, whole: bool = True) -> None:
        """Keep a copy of `array` under `key` (it may be a view of a live tensor); whole=False keeps only its
        statistics (stats(key) answers, store[key] raises KeyError)."""
        array = np.asarray(array)
        if not whole:
            self._items[key] = _Stats(tensor_stats(array))
            return
        if self.folder is None or reserve(array.nbytes):
            if self.folder is None:
                with _HELD_LOCK:
                    _HELD["bytes"] += array.nbytes
            self._items[key] = array.copy()
            self._held += array.nbytes
            return
        path = os.path.join(self.folder, f"{id(self):x}-{len(self._items)}.npy")
        try:
            np.save(path, np.ascontiguousarray(array))
        except OSError as e:
            used = sum(os.path.getsize(v) for v in self._items.values() if isinstance(v, str))
            raise OSError(f"cannot keep the recorded tensors under {self.folder} ({used / 2**30:.1f} GB written "
                          f"by this run so far): {e}; free disk space there, raise ALIGN_MEMORY_GB or align a "
                          f"smaller input") from e
        self._items[key] = path

    def put_stats(self, key: str, stats: np.ndarray) -> None:
        """Keep only a key's statistics, computed elsewhere (tensor_stats' numbers)."""
        self._items[key] = _Stats(np.asarray(stats, dtype=np.float64))

    def __getitem__(self, key: str) -> np.ndarray:
        value = self._items[key]
        if isinstance(value, _Stats):
            raise KeyError(f"{key}: only its statistics were kept")
        return np.load(value) if isinstance(value, str) else value

    def stats(self, key: str) -> np.ndarray:
        value = self._items[key]
        return value.stats if isinstance(value, _Stats) else tensor_stats(self[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def renamed(self, names: dict[str, str]) -> "TensorStore":
        """The same tensors under new keys (no copy), in this store's order; keys not in names keep theirs.
        This store keeps the ownership (close it, not the copy)."""
        out = TensorStore.__new__(TensorStore)
        out.folder, out._held = None, 0
        out._items = OrderedDict((names.get(k, k), v) for k, v in self._items.items())
        return out

    def discard(self, key: str) -> None:
        """Forget a key (its memory counts no more, its file is removed)."""
        value = self._items.pop(key, None)
        if isinstance(value, np.ndarray):
            self._held -= value.nbytes
            release(value.nbytes)
        elif isinstance(value, str):
            with contextlib.suppress(OSError):
                os.remove(value)

    def close(self) -> None:
        release(self._held)
        self._held = 0
        self._items.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class Subset(Mapping):
    """A read-only view of some keys of a mapping, in the given order (nothing is loaded until asked)."""

    def __init__(self, base: Mapping, keys):
        self.base, self.keys_ = base, list(keys)
        self._set = set(self.keys_)

    def __getitem__(self, key):
        if key not in self._set:
            raise KeyError(key)
        return self.base[key]

    def stats(self, key):
        if key not in self._set:
            raise KeyError(key)
        return self.base.stats(key) if hasattr(self.base, "stats") else tensor_stats(self.base[key])

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self):
        return len(self.keys_)
