"""Identical training batches for both frameworks from the mirrored COCO readers.

The default data is the bundled synthetic COCO-format set (generated under data/synthetic_coco on first use);
any COCO-format directory (images/ + annotations/instances.json) works. Small images keep CPU runs short.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from align.synthetic_coco import ensure_synthetic_coco

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "synthetic_coco"
TRAIN_SIZE = dict(short_side=128, max_size=160)


class DataError(ValueError):
    """A dataset the tools cannot use (no images): the CLIs print it as one line and exit 2."""


def dataset_pair(data: str | os.PathLike | None = None) -> tuple[Any, Any]:
    from paddle_impl.data.coco import CocoDetection as PCoco
    from torch_ref.data.coco import CocoDetection as TCoco
    if data is None:
        ensure_synthetic_coco(DEFAULT_DATA)
    root = Path(data or DEFAULT_DATA)
    return TCoco(root=str(root)), PCoco(root=str(root))


def loader_pair(data: str | os.PathLike | None = None, dtype: str = "float64", seed: int = 0, batch_size: int = 2,
                shuffle: bool = True, flip_prob: float = 0.5) -> tuple[Any, Any, int]:
    from paddle_impl.data.coco import build_loader as p_build
    from torch_ref.data.coco import build_loader as t_build
    t_ds, p_ds = dataset_pair(data)
    if len(t_ds) == 0:      # a loop over it would never end (training) or compare nothing (metrics)
        raise DataError(f"--data {data or DEFAULT_DATA}: no images")
    kw = dict(batch_size=batch_size, seed=seed, dtype=dtype, shuffle=shuffle, flip_prob=flip_prob, **TRAIN_SIZE)
    return t_build(t_ds, **kw), p_build(p_ds, **kw), len(t_ds.cat_ids)


def first_batches(data: str | os.PathLike | None, n: int, dtype: str, seed: int,
                  batch_size: int = 2) -> tuple[list[tuple[dict, dict]], int]:
    """[(torch batch, paddle batch)] * n (cycling through epochs), and the number of classes."""
    t_loader, p_loader, num_classes = loader_pair(data, dtype, seed, batch_size)
    out = []
    while len(out) < n:
        before = len(out)
        for tb, pb in zip(t_loader, p_loader):
            out.append((tb, pb))
            if len(out) == n:
                break
        if len(out) == before:     # an epoch gave no batch: another would not either (no endless loop)
            raise DataError(f"--data {data or DEFAULT_DATA}: the loader gives no batches")
    return out, num_classes
