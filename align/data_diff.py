"""Do the torch and Paddle data pipelines hand the models the same batches?

    python align/data_diff.py [--data DIR] [--batches N] [--batch-size B] [--dtype float32|float64]
                              [--seed S] [--out DIR] [--short-side S] [--max-size L]

Iterates both frameworks' COCO loaders (same seed: same order and flips) over the first N batches and
compares every batch: padded images, boxes, labels and the metadata (image ids, sizes, scale factors,
flips). --data takes a COCO-format set root, an official image folder (coco/val2017, next to
coco/annotations/) or an instances json; without it the synthetic set under data/synthetic_coco is used
(generated when absent). float32 runs also run both float64 pipelines, whose float32-vs-float64 error is
the noise floor (align/compare.py).
Writes DIR/data/{torch.npy, paddle.npy, diff.txt, summary.json}; exit status 0 iff the check passed
(2 for bad arguments or an unreadable dataset).
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args, frameworks  # noqa: E402
from align.compare import check_dtype, compare_runs  # noqa: E402
from align.report import worst_key, write_report  # noqa: E402
from align.synthetic_coco import ensure_synthetic_coco  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic_coco"


def batch_arrays(batch: dict, to_numpy: Callable[[Any], np.ndarray | None]) -> dict[str, np.ndarray]:
    """One collated batch as flat numpy arrays (boxes and labels of all images concatenated, with
    num_boxes to tell them apart)."""
    metas = batch["metas"]
    boxes = [to_numpy(b).reshape(-1, 4) for b in batch["boxes"]]
    return {
        "images": to_numpy(batch["images"]),
        "boxes": np.concatenate(boxes, axis=0),
        "labels": np.concatenate([to_numpy(lb).reshape(-1) for lb in batch["labels"]]).astype(np.int64),
        "num_boxes": np.asarray([len(b) for b in boxes], np.int64),
        "image_ids": np.asarray([m["image_id"] for m in metas], np.int64),
        "orig_sizes": np.asarray([m["orig_size"] for m in metas], np.int64),
        "img_sizes": np.asarray([m["img_size"] for m in metas], np.int64),
        "scale_factors": np.asarray([m["scale_factor"] for m in metas], np.float64),
        "flips": np.asarray([m["flip"] for m in metas], np.int64),
    }


def collect(loader: Any, batches: int, to_numpy: Callable[[Any], np.ndarray | None]) -> dict[str, np.ndarray]:
    """{'batchK.key': array} for the first `batches` batches, in execution order."""
    log = {}
    for k, batch in enumerate(itertools.islice(loader, batches)):
        for key, value in batch_arrays(batch, to_numpy).items():
            log[f"batch{k}.{key}"] = value
    return log


def _pipelines(data, batch_size, seed, dtype, short_side, max_size):
    import paddle_impl.data as pd
    import torch_ref.data as td
    kwargs = dict(batch_size=batch_size, seed=seed, dtype=dtype, short_side=short_side, max_size=max_size)
    return (td.build_loader(td.CocoDetection(data), **kwargs),
            pd.build_loader(pd.CocoDetection(data), **kwargs))


def run_data_diff(data: str | os.PathLike | None = None, batches: int = 2, batch_size: int = 2,
                  dtype: str = "float64", seed: int = 0, out: str | os.PathLike = "reports",
                  short_side: int = 800, max_size: int = 1333) -> dict:
    """Compare the first `batches` batches of both loaders; writes OUT/data/ and returns the summary."""
    if not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be a positive int, got {batches!r}")
    check_dtype(dtype)
    if data is None:
        ensure_synthetic_coco(DEFAULT_DATA)
        data = DEFAULT_DATA
    t_loader, p_loader = _pipelines(data, batch_size, seed, dtype, short_side, max_size)
    torch_np, paddle_np = frameworks.TORCH.to_numpy, frameworks.PADDLE.to_numpy
    torch_log, paddle_log = collect(t_loader, batches, torch_np), collect(p_loader, batches, paddle_np)
    torch64 = paddle64 = None
    if dtype == "float32":  # each framework's own float64 pipeline gives its rounding noise
        t64, p64 = _pipelines(data, batch_size, seed, "float64", short_side, max_size)
        torch64, paddle64 = collect(t64, batches, torch_np), collect(p64, batches, paddle_np)
    results = compare_runs(dtype, torch_log, paddle_log, torch64, paddle64)
    only = sorted(set(torch_log) ^ set(paddle_log))
    common = [k for k in torch_log if k in paddle_log]
    extra = {
        "data": str(data), "seed": seed, "batch_size": batch_size, "short_side": short_side,
        "max_size": max_size, "batches": len({k.split(".")[0] for k in common}),
        "unmatched": {"torch_only": [k for k in only if k in torch_log],
                      "paddle_only": [k for k in only if k in paddle_log]},
    }
    return write_report(str(Path(out) / "data"), "data", dtype,
                        {k: torch_log[k] for k in common}, {k: paddle_log[k] for k in common},
                        results, order=common, extra=extra)


def add_arguments(p):
    cli_args.add_data(p)
    p.add_argument("--batches", type=cli_args.positive_int, default=2)
    p.add_argument("--batch-size", type=cli_args.positive_int, default=2)
    cli_args.add_dtype(p)
    cli_args.add_seed(p, help="seed of the loaders' NumPy generator (order and flips)")
    cli_args.add_out(p)
    p.add_argument("--short-side", type=cli_args.positive_int, default=800)
    p.add_argument("--max-size", type=cli_args.positive_int, default=1333)


def execute(args):
    from align.runtime import configure_frameworks
    configure_frameworks()
    start = time.perf_counter()
    try:
        summary = run_data_diff(args.data, args.batches, args.batch_size, args.dtype, args.seed, args.out,
                                args.short_side, args.max_size)
    except (ValueError, OSError) as e:
        print(f"data_diff: error: {e}", file=sys.stderr)
        return 2
    worst = worst_key(summary)
    print(f"data_diff {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} ({summary['batches']} batches, "
          f"{summary['num_keys']} arrays, worst max_rel {worst[1]:.3e} at {worst[0]}, "
          f"first divergence: {summary['first_divergence']}, {time.perf_counter() - start:.1f}s)")
    print(f"report: {Path(args.out) / 'data'}")
    return 0 if summary["passed"] else 1


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
