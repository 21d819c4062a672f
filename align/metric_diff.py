"""Does the Paddle port score the same? COCO mAP of both frameworks' predictions on the same data.

    python align/metric_diff.py [--model M] [--dtype float64|float32] [--data COCO_DIR]
                                [--weights TORCH_CKPT] [--out DIR] [--seed N]

Both models predict on every image of the dataset; pycocotools' COCOeval scores each set; AP, AP50, AP75,
APs/APm/APl and the recalls are compared, with a prediction-level diff (align/metric_align.py). --model
defaults to the first zoo model with a metric hook. Writes DIR/<model>/metric/; exit 0 iff passed, 2 for
a set with no images or no ground-truth boxes (nothing to compare).
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args, zoo  # noqa: E402


def add_arguments(p):
    cli_args.add_model(p, "metric", default=(zoo.names("metric") or [None])[0])
    cli_args.add_dtype(p)
    cli_args.add_data(p)
    cli_args.add_weights(p)
    p.add_argument("--num-classes", type=cli_args.positive_int, help="head size (default: the dataset's categories)")
    cli_args.add_out(p)
    cli_args.add_seed(p)


def execute(args):
    from align.metric_align import run_metric
    from align.runtime import configure_frameworks
    from align.train_data import DataError
    configure_frameworks()
    try:
        s = run_metric(args.model, args.dtype, args.data, args.weights, args.out, args.seed, args.num_classes,
                       args.allow_nonfinite, args.cast)
    except DataError as e:
        print(f"metric_diff: error: {e}", file=sys.stderr)
        return 2
    print(f"metric_diff {args.model} {args.dtype}: {'PASSED' if s['passed'] else 'FAILED'} "
          f"(AP torch {s['torch']['AP']:.4f} paddle {s['paddle']['AP']:.4f}, "
          f"{s['num_images']} images, {len(s['prediction_diff'].get('per_image', {}))} with predictions)")
    return 0 if s["passed"] else 1


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
