"""One training step's gradients, torch vs Paddle, matched by parameter name.

    python align/backward_diff.py --model retina_r50_ghm [--dtype float32|float64] [--data COCO_DIR]
                                  [--out DIR] [--seed N]

Same seeded weights, same first batch of the mirrored COCO loaders (the bundled synthetic set unless
--data), forward + loss + backward in train mode on both sides. Logs every loss term and the gradient of
every trainable parameter (Paddle names); the first diverging parameter, in the order torch lists its
parameters, is the first divergence. Writes DIR/<model>/backward/; exit 0 iff passed.
"""
import argparse
import sys
import time
from collections import OrderedDict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.compare import compare_runs  # noqa: E402
from align.report import write_report  # noqa: E402
from align.runtime import configure_frameworks  # noqa: E402
from align.training import (TRAIN_MODELS, build_training_pair, paddle_grads, step_losses,  # noqa: E402
                            torch_grads)
from align.train_data import first_batches  # noqa: E402


def one_step(name, dtype, data, seed):
    """({key: array} torch, {key: array} paddle) for one forward/backward in dtype."""
    batches, num_classes = first_batches(data, 1, dtype, seed)
    (t_batch, p_batch), = batches
    t_model, t_loss, p_model, p_loss = build_training_pair(name, num_classes, seed, dtype)
    t_model.train()
    p_model.train()
    t_terms = step_losses(t_model, t_loss, t_batch)
    sum(t_terms.values()).backward()
    p_terms = step_losses(p_model, p_loss, p_batch)
    sum(p_terms.values()).backward()
    t_out = OrderedDict((f"loss.{k}", v.detach().numpy().reshape(1)) for k, v in t_terms.items())
    p_out = OrderedDict((f"loss.{k}", v.numpy().reshape(1)) for k, v in p_terms.items())
    t_out.update((f"grad.{k}", v) for k, v in torch_grads(t_model).items())
    p_out.update((f"grad.{k}", v) for k, v in paddle_grads(p_model).items())
    return t_out, p_out


def run(name, dtype="float64", data=None, out="reports", seed=0):
    start = time.perf_counter()
    t, p = one_step(name, dtype, data, seed)
    if dtype == "float64":
        results = compare_runs(dtype, t, p)
    else:
        t64, p64 = one_step(name, "float64", data, seed)
        results = compare_runs(dtype, t, p, t64, p64)
    unmatched = {"torch_only": [k for k in t if k not in p], "paddle_only": [k for k in p if k not in t]}
    return write_report(str(Path(out) / name / "backward"), f"backward:{name}", dtype,
                        {k: t[k] for k in results}, {k: p[k] for k in results}, results, order=list(results),
                        extra={"model": name, "seed": seed, "unmatched": unmatched,
                               "num_parameters_compared": sum(k.startswith("grad.") for k in results),
                               "seconds": time.perf_counter() - start})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(TRAIN_MODELS))
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--data", help="COCO-format directory (default: the bundled synthetic set)")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    configure_frameworks()
    summary = run(args.model, args.dtype, args.data, args.out, args.seed)
    print(f"backward_diff {args.model} {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({summary['num_parameters_compared']} gradients, first divergence: {summary['first_divergence']})")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
