"""Detections in alignment reports: fixed-size logs, and their float64 counterparts for the noise floor.

Post-processing selects (threshold, top-k, NMS), so a float32 run and a float64 run of the same framework
may keep different detections and their element-wise difference would not be rounding noise. The float64
counterpart of a float32 detection is therefore the float64 evaluation of the *same* selection: the
framework's own float64 head outputs at the detection's anchor and class, decoded in float64.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from align import frameworks
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


def detector_outputs(model: Any, tensors: dict) -> dict:
    """A zoo detector's outputs for forward alignment: forward_with_detections(images), the detections padded
    to the model's detections_per_img (align.zoo.Detector)."""
    res = model.forward_with_detections(tensors["images"])
    res["detections"] = pad_detections(res["detections"], frameworks.of(model).to_numpy, model.detections_per_img)
    return res


def two_stage_outputs(proposal_index: list | None = None) -> Callable:
    """outputs(model, tensors) for a two-stage zoo detector (align.zoo.libra): forward_with_detections with its
    proposals (labels: the FPN level; anchor_index: into the image's anchors of all levels) and detections
    (anchor_index: the RoI within the image) padded. proposal_index (per image, NumPy int64): the R-CNN runs on
    those anchors' proposals instead of the run's own, so that float32 runs and float64 runs of either
    framework compute one function after the RPN (align.zoo.libra.float32_outputs)."""
    def outputs(model: Any, tensors: dict) -> dict:
        fw = frameworks.of(model)
        index = None if proposal_index is None else [fw.tensor(i) for i in proposal_index]
        res = model.forward_with_detections(tensors["images"], proposal_index=index)
        res["proposals"] = pad_detections(res["proposals"], fw.to_numpy, model.proposal_cfg["max_per_img"])
        res["detections"] = pad_detections(res["detections"], fw.to_numpy, model.detections_per_img)
        return res
    return outputs


def _levels(records, name, prefix):
    keys = sorted((k for k in records if k.startswith(f"{prefix}.{name}.P")), key=lambda k: int(k.rsplit("P", 1)[1]))
    return [records[k] for k in keys]


def delta_values(image_size: tuple, means: Sequence[float], stds: Sequence[float], prefix: str = "output"):
    """values(records64, image, labels, anchors) -> (boxes, scores) in float64 for a detector that logs per-level
    cls_scores (logits), bbox_preds (deltas) and anchors (RetinaNet): decode and sigmoid at those anchors."""
    def values(records64, image, labels, anchors):        # this image's rows only, not the batch's
        all_anchors = np.concatenate(_levels(records64, "anchors", prefix)).astype(np.float64)
        logits = np.concatenate([lv[image] for lv in _levels(records64, "cls_scores", prefix)]).astype(np.float64)
        deltas = np.concatenate([lv[image] for lv in _levels(records64, "bbox_preds", prefix)]).astype(np.float64)
        boxes = delta_decode(all_anchors[anchors], deltas[anchors], means, stds, max_shape=image_size)
        return boxes, 1.0 / (1.0 + np.exp(-logits[anchors, labels]))
    return values


def rpn_values(image_size: tuple, prefix: str = "output"):
    """values(...) of two_stage_outputs' proposals: the RPN's logits (N, A, H, W) and deltas (N, 4A, H, W) per
    level, flattened as the RPN flattens them (H, W, A), decoded (means 0, stds 1) and clipped at each proposal's
    anchor, sigmoid of its logit; labels (levels) are implied by the anchors."""
    def values(records64, image, labels, anchors):
        all_anchors = np.concatenate(_levels(records64, "anchors", prefix)).astype(np.float64)
        logits = np.concatenate([lv[image].transpose(1, 2, 0).reshape(-1)
                                 for lv in _levels(records64, "rpn_cls", prefix)]).astype(np.float64)
        deltas = np.concatenate([lv[image].transpose(1, 2, 0).reshape(-1, 4)
                                 for lv in _levels(records64, "rpn_reg", prefix)]).astype(np.float64)
        boxes = delta_decode(all_anchors[anchors], deltas[anchors], max_shape=image_size)
        return boxes, 1.0 / (1.0 + np.exp(-logits[anchors]))
    return values


def rcnn_values(image_size: tuple, stds: Sequence[float], prefix: str = "output"):
    """values(...) of two_stage_outputs' detections: each detection's RoI (the image's rows of rois (K, 5)),
    softmax of its cls_score at the label, its class's bbox_pred decoded (means 0, stds) on the RoI, clipped."""
    def values(records64, image, labels, anchors):
        rois = np.asarray(records64[f"{prefix}.rois"], np.float64)
        rows = np.flatnonzero(rois[:, 0] == image)[anchors]
        logits = np.asarray(records64[f"{prefix}.cls_score"], np.float64)[rows]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        deltas = np.asarray(records64[f"{prefix}.bbox_pred"], np.float64)[rows].reshape(len(rows), -1, 4)
        boxes = delta_decode(rois[rows, 1:], deltas[np.arange(len(rows)), labels], stds=stds, max_shape=image_size)
        return boxes, probs[np.arange(len(rows)), labels]
    return values


def selection_values(scores_key: str = "output.scores", boxes_key: str = "output.boxes"):
    """values(...) for a detector that logs its pre-selection scores (N, C, L) and decoded boxes (N, L, 4)
    (PP-YOLOE): the float64 run's values at each (label, anchor)."""
    def values(records64, image, labels, anchors):
        return (np.asarray(records64[boxes_key][image], np.float64)[anchors],
                np.asarray(records64[scores_key][image], np.float64)[labels, anchors])
    return values


def images(records: dict, prefix: str = "output", name: str = "detections") -> list[str]:
    """The detection bases ("output.detections.<i>", or another padded selection's name) of a run, in image
    order."""
    out = []
    while f"{prefix}.{name}.{len(out)}.count" in records:
        out.append(f"{prefix}.{name}.{len(out)}")
    return out


def float64_view(records32: dict[str, np.ndarray], records64: dict[str, np.ndarray], values,
                 name: str = "detections") -> dict[str, np.ndarray]:
    """Float64 values of the detections (or the padded selection `name`) selected in a float32 run:
    values(records64, image, labels, anchors) evaluated at each float32 detection's (label, anchor_index)."""
    view = {}
    for i, base in enumerate(images(records32, name=name)):
        n = int(records32[f"{base}.count"][0])
        idx, labels = records32[f"{base}.anchor_index"][:n], records32[f"{base}.labels"][:n]
        boxes = np.zeros_like(records32[f"{base}.boxes"], dtype=np.float64)
        scores = np.zeros_like(records32[f"{base}.scores"], dtype=np.float64)
        if n:
            boxes[:n], scores[:n] = values(records64, i, labels, idx)
        view[f"{base}.boxes"], view[f"{base}.scores"] = boxes, scores
        for k in ("count", "labels", "anchor_index"):
            view[f"{base}.{k}"] = records32[f"{base}.{k}"]
    return view
