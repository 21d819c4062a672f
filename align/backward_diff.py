"""One training step's gradients, torch vs Paddle, matched by parameter name.

    python align/backward_diff.py --model retina_r50_ghm [--dtype float32|float64] [--data COCO_DIR]
                                  [--out DIR] [--seed N]

Models with a training spec run one step of their recipe (forward + loss + backward in train mode on the
first batch of the mirrored COCO loaders); the others take the gradient of a seeded projection of their
outputs (align/train_step.py). Every loss term and every parameter's gradient, and on the projection path
every module's output gradient (outgrad.<module>), in backward execution order.
Writes DIR/<model>/backward/; exit 0 iff passed.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args  # noqa: E402


def add_arguments(p):
    cli_args.add_model(p, "backward", required=False)
    cli_args.add_pair(p)
    cli_args.add_dtype(p)
    cli_args.add_data(p)
    cli_args.add_out(p)
    cli_args.add_seed(p)


def execute(args):
    cli_args.model_or_pair(args)
    from align.backward import align_backward
    from align.pair_file import PairFileError, load_pair
    from align.runtime import configure_frameworks
    from align.train_step import run_backward
    from weights_convert.checkpoint_io import CheckpointError
    configure_frameworks()
    try:
        if args.pair:
            pair = load_pair(args.pair, args.dtype)
            args.model = pair.name
            summary = align_backward(pair.torch_model, pair.paddle_model, pair.inputs, args.dtype,
                                     str(Path(args.out) / pair.name / "backward"), args.seed,
                                     check=f"backward:{pair.name}", extra={"pair_file": args.pair},
                                     objective_fns=pair.objective_fns, keyword=True)
        else:
            summary = run_backward(args.model, args.dtype, args.data, args.out, args.seed)
    except (CheckpointError, PairFileError) as e:
        print(f"backward_diff: error: {e}", file=sys.stderr)
        return 2
    print(f"backward_diff {args.model} {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({summary['num_parameters_compared']} gradients, first divergence: {summary['first_divergence']})")
    return 0 if summary["passed"] else 1


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
