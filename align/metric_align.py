"""Does the Paddle port score the same? COCO mAP of both frameworks' predictions on the same data
(metric_diff's library).

    summary = run_metric("retina_r50", dtype="float64", out="reports")

Both models (seeded weights or a torch checkpoint, converted to Paddle) predict on every image of the dataset
(no flip, fixed order) through the zoo spec's predict hook; predictions go back to the original image frame
and category ids, and pycocotools' COCOeval scores each set. AP, AP50, AP75, APs/APm/APl and the recalls are
compared (identical in float64; float32 within align.compare.check_metric's limits), with a prediction-level
diff (paired boxes, scores, labels). A set with no images or no ground-truth boxes is refused (DataError):
COCOeval scores -1 on both sides there, so the check would pass having compared nothing.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from align import frameworks
from align.coco_metric import coco_eval, detections_to_coco, prediction_diff
from align.compare import check_metric, reported
from align.progress import progress
from align.report import write_report
from align.train_data import DataError, loader_pair
from align.zoo import ModelSpec, build_models, get_spec


def predict_all(spec: ModelSpec, model: Any, loader: Any, label_to_cat_id: list[int]) -> list[dict]:
    fw, dets = frameworks.of(model), []
    for batch in progress(loader, f"predict {fw.name}", len(loader)):
        sizes = [m["img_size"] for m in batch["metas"]]
        preds = spec.predict(model, batch["images"], sizes)
        dets += detections_to_coco([fw.to_numpy(p["boxes"]) for p in preds], [fw.to_numpy(p["scores"]) for p in preds],
                                   [fw.to_numpy(p["labels"]) for p in preds], batch["metas"], label_to_cat_id)
    return dets


def run_metric(model: str, dtype: str = "float64", data: str | os.PathLike | None = None,
               weights: str | None = None, out: str | os.PathLike = "reports", seed: int = 0,
               num_classes: int | None = None, allow_nonfinite: bool = False, cast: bool = False) -> dict:
    spec = get_spec(model)
    if spec.predict is None:
        raise ValueError(f"model {model!r} has no metric hook (predict) in its zoo spec")
    t_loader, p_loader, n_cls = loader_pair(data, dtype, seed, batch_size=2, shuffle=False, flip_prob=0.0)
    if not t_loader.dataset.coco.getAnnIds():      # checked before the models are built: it costs nothing
        raise DataError(f"--data {data or 'synthetic'}: no ground-truth boxes, the COCO metric is undefined")
    t_model, p_model = build_models(spec, weights, seed, allow_nonfinite, cast, num_classes=num_classes or n_cls)
    for m in (t_model, p_model):
        frameworks.of(m).set_mode(frameworks.of(m).cast(m, dtype), train=False)
    label_to_cat_id = t_loader.dataset.label_to_cat_id
    t_dets = predict_all(spec, t_model, t_loader, label_to_cat_id)
    p_dets = predict_all(spec, p_model, p_loader, label_to_cat_id)
    coco = t_loader.dataset.coco
    t_stats, p_stats = coco_eval(coco, t_dets), coco_eval(coco, p_dets)
    diff = prediction_diff(t_dets, p_dets)
    t_log = OrderedDict((f"coco.{k}", np.array([v])) for k, v in t_stats.items())
    p_log = OrderedDict((f"coco.{k}", np.array([v])) for k, v in p_stats.items())
    t_log["predictions.count"], p_log["predictions.count"] = np.array([len(t_dets)]), np.array([len(p_dets)])
    # float64 must give identical metrics; float32 predictions may flip at thresholds, so the metric may
    # move by a detection: allowed within align/thresholds.json's metric_float32_max_abs, and reported.
    results = OrderedDict()
    for k in t_log:
        if k.startswith("coco.") or dtype == "float64":
            results[k] = check_metric(t_log[k], p_log[k], dtype)
        else:
            results[k] = reported(t_log[k], p_log[k])
    return write_report(str(Path(out) / model / "metric"), f"metric:{model}", dtype, t_log, p_log, results,
                        extra={"model": model, "torch": t_stats, "paddle": p_stats, "prediction_diff": diff,
                               "num_images": len(t_loader.dataset), "weights": weights or "seeded init"})
