"""Where recorded tensors wait to be compared: on disk, one .npy per tensor, read back one at a time.

A forward check records every module's output of up to five runs (float32: torch, torch's other kernels,
torch and Paddle in float64, Paddle); held in memory they take several GB at real image sizes (retina_r50
float64 at 1x3x512x640: 2.4 GB per side). A TensorStore keeps them in a temporary folder next to the report
and hands each back as a fresh array, so comparing costs one tensor's memory at a time. Small tensors stay in
memory.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Iterator

import numpy as np

IN_MEMORY_BYTES = 1 << 20          # tensors below 1 MB are kept in memory


class TensorStore(Mapping):
    """An ordered {key: ndarray} whose large arrays live on disk under `folder` (a fresh temp folder);
    folder None keeps every array in memory."""

    def __init__(self, folder: str | os.PathLike | None = None):
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            folder = tempfile.mkdtemp(prefix="tensors-", dir=folder)
        self.folder = folder
        self._items: OrderedDict = OrderedDict()

    def put(self, key: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        if self.folder is None or array.nbytes < IN_MEMORY_BYTES:
            self._items[key] = array          # the callers hand over copies of their own
            return
        path = os.path.join(self.folder, f"{id(self):x}-{len(self._items)}.npy")
        try:
            np.save(path, np.ascontiguousarray(array))
        except OSError as e:
            used = sum(os.path.getsize(v) for v in self._items.values() if isinstance(v, str))
            raise OSError(f"cannot keep the recorded tensors under {self.folder} ({used / 2**30:.1f} GB written "
                          f"by this run so far): {e}; free disk space there or align a smaller input") from e
        self._items[key] = path

    def __getitem__(self, key: str) -> np.ndarray:
        value = self._items[key]
        return np.load(value) if isinstance(value, str) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def renamed(self, names: dict[str, str]) -> "TensorStore":
        """The same tensors under new keys (no copy), in this store's order; keys not in names keep theirs."""
        out = TensorStore.__new__(TensorStore)
        out.folder = self.folder
        out._items = OrderedDict((names.get(k, k), v) for k, v in self._items.items())
        return out

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class Subset(Mapping):
    """A read-only view of some keys of a mapping, in the given order (nothing is loaded until asked)."""

    def __init__(self, base: Mapping, keys):
        self.base, self.keys_ = base, list(keys)

    def __getitem__(self, key):
        if key not in self.keys_:
            raise KeyError(key)
        return self.base[key]

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self):
        return len(self.keys_)
