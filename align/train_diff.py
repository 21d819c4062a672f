"""Train both frameworks side by side on identical batches and compare every step.

    python align/train_diff.py --model retina_r50_ghm [--steps 10] [--dtype float32|float64] [--data DIR]
                               [--out DIR] [--seed N] [--resume]
    python align/train_diff.py --model ppyoloe_s [--static-assigner-steps K]

Per step: the total loss and each term, the learning rate, the gradient norm, global parameter statistics
and the loss modules' state (GHM acc_sum); the recipe is the zoo spec's (align/training.py), the check
align/train_align.py; PP-YOLOE also logs its EMA (ema_*) and the assigner of each step, ATSS for the first K
steps (--static-assigner-steps, default half the steps) and task-aligned after. float64: every logged value
within max_rel 1e-8 at every step; float32: the first step against the noise floor, later steps on their
float64 twins (both noises reported per step).
Writes DIR/<model>/train/{torch.npy, paddle.npy, diff.txt, summary.json, curves.png}. While it runs,
checkpoint_<dtype>.npz holds both sides after the last completed step (both models and optimizers: about a GB
for float64; plain arrays and JSON, never pickles), so --resume continues an interrupted run; a completed run
deletes it unless --keep-checkpoint. --no-checkpoint skips writing it (the CI gate never resumes).
--resume refuses a checkpoint made with another model, dtype, seed, --data or batch size (naming each), or
past this run's --steps; more --steps than the checkpoint's continue the same trajectory. Without a checkpoint
it warns and starts at step 0.
Exit 0 iff passed, 1 if not, 2 for an unreadable or refused checkpoint or a dataset with no images.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args  # noqa: E402


def add_arguments(p):
    cli_args.add_model(p, "train", required=False)
    cli_args.add_pair(p)
    p.add_argument("--steps", type=cli_args.positive_int, default=None, help="(default: 10, a pair file: 3)")
    cli_args.add_dtype(p)
    cli_args.add_data(p)
    cli_args.add_out(p)
    cli_args.add_seed(p)
    p.add_argument("--static-assigner-steps", type=cli_args.nonnegative_int, default=None, metavar="K",
                   help="PP-YOLOE: the static ATSS assigner for the first K steps, task-aligned after (default: "
                        "half the steps)")
    p.add_argument("--resume", action="store_true", help="continue from the last completed step")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep checkpoint_<dtype>.npz after the run (to --resume it later with more --steps)")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="do not write the per-step checkpoint (about a GB per step in float64; no --resume)")


def execute(args):
    cli_args.model_or_pair(args)
    if args.no_checkpoint and (args.resume or args.keep_checkpoint):
        args.parser.error("--no-checkpoint cannot be combined with --resume or --keep-checkpoint")
    options = {"static_assigner_steps": args.static_assigner_steps}
    if args.static_assigner_steps is not None:
        from align.zoo import get_spec
        if args.pair or get_spec(args.model).train.options is None:
            args.parser.error("--static-assigner-steps: only PP-YOLOE models have a static assigner")
    if args.pair and (args.resume or args.keep_checkpoint or args.data):
        args.parser.error("--pair trains on the file's batches without checkpoints: no --resume, "
                          "--keep-checkpoint or --data")
    from align.pair_file import PairFileError, load_pair
    from align.runtime import configure_frameworks
    from align.train_align import align_train, run_train
    from align.train_data import DataError
    from weights_convert.checkpoint_io import CheckpointError
    configure_frameworks()
    try:
        if args.pair:
            pair = load_pair(args.pair, args.dtype)
            args.model, args.steps = pair.name, args.steps or 3
            summary = align_train(pair.torch_model, pair.paddle_model, pair.batches or pair.inputs, args.dtype,
                                  str(Path(args.out) / pair.name / "train"), args.steps, pair.objective_fns,
                                  seed=args.seed, keyword=True, check=f"train:{pair.name}")
        else:
            args.steps = args.steps or 10
            summary = run_train(args.model, args.steps, args.dtype, args.data, args.out, args.seed, args.resume,
                                args.keep_checkpoint, checkpoint=not args.no_checkpoint, options=options)
    except (CheckpointError, PairFileError, DataError) as e:
        print(f"train_diff: error: {e}", file=sys.stderr)
        return 2
    sec = summary["seconds_per_step"]
    print(f"train_diff {args.model} {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({args.steps} steps, first divergence: {summary['first_divergence']}, "
          f"s/step torch {sec['torch']:.2f} paddle {sec['paddle']:.2f})")
    return 0 if summary["passed"] else 1


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
