"""Where recorded tensors wait to be compared: in memory up to a budget, then on disk, read back one at a time.

A forward check records every module's output of up to five runs (float32: torch in float64, float32 and with
its other kernels, Paddle in float32 and float64). At real image sizes they do not fit in memory (retina_r50
float64 at 2x3x800x1344: 15 GB per run). The tools keep only the runs a later run is compared against
(align/forward.py compares the last run as it arrives); a TensorStore holds each of them, in memory while the
process-wide budget lasts (ALIGN_MEMORY_GB, default 4) and beyond it as one .npy per tensor in a temporary
folder next to the report, handed back as a fresh array. A key may also keep only its statistics
(`put(..., whole=False)`): what a report keeps of a tensor it does not save whole.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from twin_common.atomic import remove_dead

STATS_FIELDS = ("mean", "std", "min", "max", "l2_norm", "size")
IN_MEMORY_BYTES = 1 << 20          # tensors below 1 MB stay in memory whatever the budget
_HELD = {"bytes": 0}               # bytes every store of this process holds in memory


def memory_budget() -> int:
    """Bytes the stores of this process may hold in memory (ALIGN_MEMORY_GB, default 4)."""
    value = os.environ.get("ALIGN_MEMORY_GB", "4")
    try:
        gb = float(value)
    except ValueError:
        raise ValueError(f"ALIGN_MEMORY_GB must be a number of GB, got {value!r}") from None
    return int(gb * (1 << 30))


def tensor_stats(value: np.ndarray) -> np.ndarray:
    """What a report keeps of a tensor it does not save whole: mean, std, min, max, L2 norm, size (float64)."""
    a = np.asarray(value, dtype=np.float64).ravel()
    if not a.size:
        return np.zeros(len(STATS_FIELDS))
    return np.array([a.mean(), a.std(), a.min(), a.max(), np.sqrt(a @ a), a.size])


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
        if self.folder is None or array.nbytes < IN_MEMORY_BYTES or _HELD["bytes"] + array.nbytes <= memory_budget():
            self._items[key] = array.copy()
            self._held += array.nbytes
            _HELD["bytes"] += array.nbytes
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

    def close(self) -> None:
        _HELD["bytes"] -= self._held
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
