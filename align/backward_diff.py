"""One training step's gradients, torch vs Paddle, matched by parameter name.

    python align/backward_diff.py --model retina_r50_ghm [--dtype float32|float64] [--data COCO_DIR]
                                  [--out DIR] [--seed N]

Models with a training spec run one step of their recipe (forward + loss + backward in train mode on the
first batch of the mirrored COCO loaders); the others take the gradient of a seeded projection of their
outputs (align/train_step.py). Every loss term and every parameter's gradient, in backward execution order.
Writes DIR/<model>/backward/; exit 0 iff passed.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args  # noqa: E402


def add_arguments(p):
    cli_args.add_model(p, "backward")
    cli_args.add_dtype(p)
    cli_args.add_data(p)
    cli_args.add_out(p)
    cli_args.add_seed(p)


def execute(args):
    from align.runtime import configure_frameworks
    from align.train_step import run_backward
    configure_frameworks()
    summary = run_backward(args.model, args.dtype, args.data, args.out, args.seed)
    print(f"backward_diff {args.model} {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({summary['num_parameters_compared']} gradients, first divergence: {summary['first_divergence']})")
    return 0 if summary["passed"] else 1


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
