"""Float32 detections of two frameworks, judged where rounding flipped a selection (align.compare's float32-events
idea, applied to score thresholds, NMS and top-k).

Post-processing decides by comparisons (score > threshold, IoU > threshold, a score's rank). Where two scores,
or an IoU and its threshold, are within float32 rounding of each other, the two frameworks may keep different
detections; both are right. So detections are matched by (label, anchor): the matched ones are judged by the
float32 rule on their values (their float64 counterparts: align.detections.float64_view), and every detection
only one side kept ("flipped") must be explained by a decision that rounding could flip, measured on the float64
values with a tolerance of NOISE_MULTIPLE x the detections' own float32 noise:

- its score is within the tolerance of the score threshold;
- a detection of the same class overlaps it (IoU above the threshold) with a score within the tolerance of its
  own: which of the two NMS keeps depends on their order;
- its IoU with a detection of the same class is within the tolerance of the IoU threshold (the IoU's tolerance
  from the boxes' by finite differences);
- a detection of the same class whose own flip is explained overlaps it above the threshold (a cascade);
- the side that dropped it is full (keep_top_k) and its score is within the tolerance of that side's lowest one.

An unexplained flip fails the image's labels / anchor_index (rule exact-events, with the counts in the report).
A float32 defect that moves scores or boxes beyond rounding fails the matched values, and one that changes
decisions beyond rounding leaves flips that nothing explains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from align.compare import NOISE_MULTIPLE, ULP_FLOOR, check_exact_events, check_float32, max_abs_diff
from align.detections import float64_view, images

FIELDS = ("boxes", "scores")


@dataclass(frozen=True)
class DetectionView:
    """A detector's float64 view of its float32 selections and the thresholds its post-processing decides by.
    values(records64, image, labels, anchors) -> (boxes (K, 4), scores (K,)) in float64."""

    values: Callable
    score_threshold: float
    iou_threshold: float
    keep_top_k: int
    name: str = "detections"                          # the selection's key: output.<name>.<image>.*

    def __call__(self, records32: dict, records64: dict) -> dict:
        return float64_view(records32, records64, self.values, self.name)

    def judge(self, t32: dict, p32: dict, tv64: dict, pv64: dict, t64: dict, p64: dict,
              variants: list[tuple[dict, dict]] = ()) -> dict[str, dict]:
        """Stats for every detection key of both float32 runs (t32, p32), with their float64 views (tv64, pv64),
        the float64 runs (t64, p64) and torch's other-kernel runs with their views (variants)."""
        results = {}
        for i, base in enumerate(images(t32, name=self.name)):
            if f"{base}.count" in p32:
                results.update(self._image(i, base, t32, p32, tv64, pv64, t64, variants))
        return results

    def _image(self, i, base, t32, p32, tv64, pv64, t64, variants):
        rows_t, rows_p = _rows(t32, base), _rows(p32, base)
        common = [k for k in rows_t if k in rows_p]
        it, ip = [rows_t[k] for k in common], [rows_p[k] for k in common]
        out, noise = {}, {}
        for field in FIELDS:
            key = f"{base}.{field}"
            pairs = []
            for v32, v64 in variants:
                rows_v = _rows(v32, base) if f"{base}.count" in v32 else {}
                iv = [rows_v[k] for k in common if k in rows_v]
                pairs.append((v32[key][iv], v64[key][iv]))
            a, b = t32[key][it], p32[key][ip]
            ra, rb = tv64[key][it], pv64[key][ip]
            out[key] = check_float32(a, b, ra, rb, torch_variants=pairs)
            out[key]["matched"] = len(common)
            scale = float(np.max(np.abs(ra))) if ra.size else 1.0
            noise[field] = NOISE_MULTIPLE * max(max_abs_diff(a, ra) if a.size else 0.0,
                                                max_abs_diff(b, rb) if b.size else 0.0, ULP_FLOOR * scale)
        flipped = [(k, "torch") for k in rows_t if k not in rows_p] + [(k, "paddle") for k in rows_p if k not in rows_t]
        unexplained, reasons = self._unexplained(i, common, flipped, t32, p32, base, t64, noise)
        for field in ("count", "labels", "anchor_index"):
            key = f"{base}.{field}"
            out[key] = check_exact_events(t32[key], p32[key], len(flipped), len(unexplained), event="flipped")
            out[key]["events"].update({f"explained_by_{r}": n for r, n in sorted(reasons.items())})
            if unexplained:
                out[key]["unexplained_detections"] = [[int(k[0]), int(k[1]), side] for k, side in unexplained[:10]]
        return out

    def _unexplained(self, i, common, flipped, t32, p32, base, t64, noise):
        """The flipped detections ((label, anchor), side that kept it) that no rounding-sized decision explains,
        and {reason: count} of those explained."""
        if not flipped:
            return [], {}
        keys = common + [k for k, _ in flipped]
        labels = np.array([k[0] for k in keys], np.int64)
        anchors = np.array([k[1] for k in keys], np.int64)
        boxes, scores = self.values(t64, i, labels, anchors)
        tol_s, tol_b = noise["scores"], noise["boxes"]
        iou = _iou(boxes, boxes)
        tol_iou = _iou_tolerance(boxes, iou, tol_b)
        same = labels[:, None] == labels[None, :]
        np.fill_diagonal(same, False)
        overlaps = same & (iou + tol_iou > self.iou_threshold)
        near_thr = same & (np.abs(iou - self.iou_threshold) <= tol_iou)
        near_score = np.abs(scores[:, None] - scores[None, :]) <= 2 * tol_s
        lowest = {side: float(np.min(run[f"{base}.scores"][:int(run[f"{base}.count"][0])], initial=np.inf))
                  for side, run in (("torch", t32), ("paddle", p32))}
        full = {side: int(run[f"{base}.count"][0]) >= self.keep_top_k
                for side, run in (("torch", t32), ("paddle", p32))}
        explained = {}                              # flip -> the decision that explains it
        for j, (key, side) in enumerate(flipped, start=len(common)):
            dropped_by = "paddle" if side == "torch" else "torch"
            if abs(scores[j] - self.score_threshold) <= tol_s:
                explained[j] = "score_threshold"
            elif np.any(overlaps[j] & near_score[j]):
                explained[j] = "nms_order"
            elif np.any(near_thr[j]):
                explained[j] = "iou_threshold"
            elif full[dropped_by] and scores[j] <= lowest[dropped_by] + 2 * tol_s:
                explained[j] = "keep_top_k"
        changed = True
        while changed:                              # cascades: an explained flip may change its neighbours' fate
            changed = False
            for j in range(len(common), len(keys)):
                if j not in explained and any(overlaps[j, e] for e in explained):
                    explained[j] = "cascade"
                    changed = True
        reasons = {}
        for reason in explained.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return [f for j, f in enumerate(flipped, start=len(common)) if j not in explained], reasons


def _rows(run: dict, base: str) -> dict[tuple[int, int], int]:
    n = int(run[f"{base}.count"][0])
    return {(int(c), int(a)): r for r, (c, a) in enumerate(zip(run[f"{base}.labels"][:n],
                                                               run[f"{base}.anchor_index"][:n]))}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (K, M) of x1y1x2y2 boxes, no +1 (normalized), 0 for disjoint boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _iou_tolerance(boxes: np.ndarray, base: np.ndarray, tol: float) -> np.ndarray:
    """How far each pair's IoU (base = _iou(boxes, boxes)) can move when every coordinate moves by up to tol: the
    sum over the eight coordinates of |IoU change| for a step of tol (finite differences, linear in tol)."""
    total = np.zeros_like(base)
    for c in range(4):
        step = np.zeros(4)
        step[c] = tol
        moved = boxes + step
        total += np.abs(_iou(moved, boxes) - base) + np.abs(_iou(boxes, moved) - base)
    return total + ULP_FLOOR


@dataclass(frozen=True)
class SelectionViews:
    """Several selections of one detector (a two-stage one's proposals and detections), each with its view."""

    views: tuple

    def __call__(self, records32: dict, records64: dict) -> dict:
        out = {}
        for view in self.views:
            out.update(view(records32, records64))
        return out

    def judge(self, *args, **kwargs) -> dict[str, dict]:
        out = {}
        for view in self.views:
            out.update(view.judge(*args, **kwargs))
        return out
