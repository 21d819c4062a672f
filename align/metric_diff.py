"""Does the Paddle port score the same? COCO mAP of both frameworks' predictions on the same data.

    python align/metric_diff.py [--model retina_r50] [--dtype float64|float32] [--data COCO_DIR]
                                [--weights TORCH_CKPT] [--out DIR] [--seed N]

Both models (seeded weights or --weights, converted to Paddle) predict on every image of the dataset (no
flip, fixed order), predictions go back to the original image frame and category ids, and pycocotools'
COCOeval scores each set. AP, AP50, AP75, APs/APm/APl and the recalls are compared (identical in float64),
with a prediction-level diff (paired boxes, scores, labels). Writes DIR/<model>/metric/; exit 0 iff passed.
"""
import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.coco_metric import coco_eval, detections_to_coco, prediction_diff  # noqa: E402
from align.compare import check_metric, reported  # noqa: E402
from align.hooks import paddle_to_numpy, torch_to_numpy  # noqa: E402
from align.report import write_report  # noqa: E402
from align.runtime import configure_frameworks  # noqa: E402
from align.train_data import loader_pair  # noqa: E402
from align.zoo import build_models, get_spec  # noqa: E402


def predict_all(model, loader, to_numpy, label_to_cat_id):
    dets = []
    for batch in loader:
        sizes = [m["img_size"] for m in batch["metas"]]
        preds = model.predict(batch["images"], image_sizes=sizes)
        dets += detections_to_coco([to_numpy(p["boxes"]) for p in preds], [to_numpy(p["scores"]) for p in preds],
                                   [to_numpy(p["labels"]) for p in preds], batch["metas"], label_to_cat_id)
    return dets


def run(model="retina_r50", dtype="float64", data=None, weights=None, out="reports", seed=0, num_classes=None):
    import torch
    t_loader, p_loader, n_cls = loader_pair(data, dtype, seed, batch_size=2, shuffle=False, flip_prob=0.0)
    spec = get_spec(model)
    spec = type(spec)(**{**vars(spec), "kwargs": {**spec.kwargs, "num_classes": num_classes or n_cls}})
    t_model, p_model = build_models(spec, weights, seed)
    t_model.to(getattr(torch, dtype)).eval()
    p_model.to(dtype=dtype)
    p_model.eval()
    label_to_cat_id = t_loader.dataset.label_to_cat_id
    t_dets = predict_all(t_model, t_loader, torch_to_numpy, label_to_cat_id)
    p_dets = predict_all(p_model, p_loader, paddle_to_numpy, label_to_cat_id)
    coco = t_loader.dataset.coco
    t_stats, p_stats = coco_eval(coco, t_dets), coco_eval(coco, p_dets)
    diff = prediction_diff(t_dets, p_dets)
    t_log = OrderedDict((f"coco.{k}", np.array([v])) for k, v in t_stats.items())
    p_log = OrderedDict((f"coco.{k}", np.array([v])) for k, v in p_stats.items())
    t_log["predictions.count"], p_log["predictions.count"] = np.array([len(t_dets)]), np.array([len(p_dets)])
    # float64 must give identical metrics; float32 predictions may flip at thresholds, so the metric may
    # move by a detection: allowed within half a percent of AP there, and reported.
    # (align.compare.check_metric, limits in align/thresholds.json)
    results = OrderedDict()
    for k in t_log:
        if k.startswith("coco.") or dtype == "float64":
            results[k] = check_metric(t_log[k], p_log[k], dtype)
        else:
            results[k] = reported(t_log[k], p_log[k])
    return write_report(str(Path(out) / model / "metric"), f"metric:{model}", dtype, t_log, p_log, results,
                        extra={"model": model, "torch": t_stats, "paddle": p_stats, "prediction_diff": diff,
                               "num_images": len(t_loader.dataset), "weights": weights or "seeded init"})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="retina_r50", choices=["retina_r50", "retina_r50_tv"])
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--data", help="COCO-format directory (default: the bundled synthetic set)")
    ap.add_argument("--weights", help="torch checkpoint of the detector")
    ap.add_argument("--num-classes", type=int, help="head size (default: the dataset's categories)")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    configure_frameworks()
    s = run(args.model, args.dtype, args.data, args.weights, args.out, args.seed, args.num_classes)
    print(f"metric_diff {args.model} {args.dtype}: {'PASSED' if s['passed'] else 'FAILED'} "
          f"(AP torch {s['torch']['AP']:.4f} paddle {s['paddle']['AP']:.4f}, "
          f"{s['num_images']} images, {len(s['prediction_diff'].get('per_image', {}))} with predictions)")
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
