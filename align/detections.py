"""Detections in alignment reports: fixed-size logs, and their float64 counterparts for the noise floor.

Post-processing selects (threshold, top-k, NMS), so a float32 run and a float64 run of the same framework
may keep different detections and their element-wise difference would not be rounding noise. The float64
counterpart of a float32 detection is therefore the float64 evaluation of the *same* selection: the
framework's own float64 head outputs at the detection's anchor and class, decoded in float64.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from align.numpy_ref.box_coder import delta_decode

FIELDS = ("boxes", "scores", "labels", "anchor_index")


def pad_detections(detections: list[dict], to_numpy: Callable[[Any], np.ndarray | None],
                   max_det: int) -> dict[str, dict[str, np.ndarray]]:
    """Variable-length detections -> {image: {count, boxes, scores, labels, anchor_index}} of fixed size
    (zeros, or -1 for integer fields, past 'count'), so both logs share keys and shapes.

    Rows are put in a canonical order, by (label, anchor_index), not by score: two detections whose scores
    differ by a rounding error may swap places in score order, but are the same detections."""
    out = {}
    for i, det in enumerate(detections):
        arrays = {k: to_numpy(det[k]) for k in FIELDS}
        n = min(len(arrays["scores"]), max_det)
        order = np.lexsort((arrays["anchor_index"][:n], arrays["labels"][:n]))
        arrays = {k: a[:n][order] for k, a in arrays.items()}
        entry = {"count": np.array([n], np.int64)}
        for k, a in arrays.items():
            fill = -1 if k in ("labels", "anchor_index") else 0
            padded = np.full((max_det,) + a.shape[1:], fill, a.dtype if fill == 0 else np.int64)
            padded[:n] = a[:n]
            entry[k] = padded
        out[str(i)] = entry
    return out


def _levels(records, name, prefix):
    keys = sorted((k for k in records if k.startswith(f"{prefix}.{name}.P")), key=lambda k: int(k.rsplit("P", 1)[1]))
    return [records[k] for k in keys]


def float64_detection_view(records32: dict[str, np.ndarray], records64: dict[str, np.ndarray], image_size: tuple,
                           means: Sequence[float], stds: Sequence[float],
                           prefix: str = "output") -> dict[str, np.ndarray]:
    """Float64 values of the detections selected in a float32 run, from that framework's float64 run."""
    anchors = np.concatenate(_levels(records64, "anchors", prefix)).astype(np.float64)
    logits = np.concatenate(_levels(records64, "cls_scores", prefix), axis=1).astype(np.float64)
    deltas = np.concatenate(_levels(records64, "bbox_preds", prefix), axis=1).astype(np.float64)
    view = {}
    i = 0
    while f"{prefix}.detections.{i}.count" in records32:
        base = f"{prefix}.detections.{i}"
        n = int(records32[f"{base}.count"][0])
        idx = records32[f"{base}.anchor_index"][:n]
        labels = records32[f"{base}.labels"][:n]
        boxes = np.zeros_like(records32[f"{base}.boxes"], dtype=np.float64)
        scores = np.zeros_like(records32[f"{base}.scores"], dtype=np.float64)
        boxes[:n] = delta_decode(anchors[idx], deltas[i, idx], means, stds, max_shape=image_size)
        scores[:n] = 1.0 / (1.0 + np.exp(-logits[i, idx, labels]))
        view[f"{base}.boxes"] = boxes
        view[f"{base}.scores"] = scores
        for k in ("count", "labels", "anchor_index"):
            view[f"{base}.{k}"] = records32[f"{base}.{k}"]
        i += 1
    return view


def float64_selection_view(records32: dict[str, np.ndarray], records64: dict[str, np.ndarray],
                           scores_key: str = "output.scores", boxes_key: str = "output.boxes",
                           prefix: str = "output") -> dict[str, np.ndarray]:
    """Float64 values of the detections selected in a float32 run, for detectors that output their
    pre-selection scores (N, C, L) and decoded boxes (N, L, 4): each detection's float64 score and box are the
    float64 run's values at its (label, anchor_index)."""
    all_scores, all_boxes = records64[scores_key], records64[boxes_key]
    view = {}
    i = 0
    while f"{prefix}.detections.{i}.count" in records32:
        base = f"{prefix}.detections.{i}"
        n = int(records32[f"{base}.count"][0])
        idx, labels = records32[f"{base}.anchor_index"][:n], records32[f"{base}.labels"][:n]
        boxes = np.zeros_like(records32[f"{base}.boxes"], dtype=np.float64)
        scores = np.zeros_like(records32[f"{base}.scores"], dtype=np.float64)
        boxes[:n] = all_boxes[i][idx]
        scores[:n] = all_scores[i][labels, idx]
        view[f"{base}.boxes"], view[f"{base}.scores"] = boxes, scores
        for k in ("count", "labels", "anchor_index"):
            view[f"{base}.{k}"] = records32[f"{base}.{k}"]
        i += 1
    return view
