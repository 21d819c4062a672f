"""Does the Paddle twin compute the same function as the torch model? Which layer diverges first?

    python align/forward_diff.py --model retina_r50 [--dtype float32|float64] [--weights TORCH_CKPT]
                                 [--out DIR] [--seed N] [--input-shape N,3,H,W] [--deploy]
    python align/forward_diff.py --list

Builds the torch model (seeded init, or --weights), converts its weights into the Paddle twin, feeds
identical seeded inputs, runs both in eval mode and compares every named submodule's output and what the
zoo spec adds (a detector: head outputs, anchors, post-processed detections). Writes
DIR/<model>/forward/{torch.npy, paddle.npy, diff.txt, summary.json}; exit status 0 iff the check passed
(2 for bad arguments or weights). --deploy aligns the models' inference form instead (PP-YOLOE: RepVGG blocks
folded, in each framework), in DIR/<model>/forward_deploy/.
"""
import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args, zoo  # noqa: E402
from align.forward import align_forward  # noqa: E402
from align.report import worst_key  # noqa: E402


def run(model, dtype="float64", out="reports", weights=None, seed=0, input_shape=None, save_tensors="failing",
        allow_nonfinite=False, cast=False, deploy=False):
    """Forward alignment of a zoo model; writes out/<model>/forward/ (deploy: forward_deploy/) and returns the
    summary."""
    spec = zoo.get_spec(model)
    if deploy and spec.deploy is None:
        raise ValueError(f"--deploy: model {model!r} has no deploy form")
    torch_model, paddle_model = zoo.build_models(spec, weights, seed, allow_nonfinite, cast)
    if deploy:
        torch_model, paddle_model = (spec.deploy(m, dtype) for m in (torch_model, paddle_model))
    shape = tuple(input_shape or spec.input_shape)
    view = spec.float64_view(torch_model, shape) if spec.float64_view else None
    inputs = spec.inputs(seed, shape)
    outputs = spec.outputs
    if dtype == "float32" and spec.float32_outputs is not None:
        outputs = spec.float32_outputs(torch_model, inputs)
    return align_forward(torch_model, paddle_model, inputs, dtype,
                         str(Path(out) / model / ("forward_deploy" if deploy else "forward")), outputs,
                         check=f"forward:{model}", extra={"model": model, "seed": seed, "deploy": deploy,
                                                          "weights": weights or "seeded init"},
                         float64_view=view, save_tensors=save_tensors)


def _shape(text):
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"must be N,3,H,W, got {text!r}")
    return shape


def add_arguments(p):
    cli_args.add_model(p, "forward", required=False)
    cli_args.add_dtype(p)
    cli_args.add_weights(p)
    cli_args.add_out(p)
    cli_args.add_seed(p)
    p.add_argument("--input-shape", type=_shape, help="N,3,H,W (default: the model's own)")
    p.add_argument("--deploy", action="store_true", help="align the deployed form (PP-YOLOE: RepVGG folded)")
    cli_args.add_pair(p)
    cli_args.add_save_tensors(p)
    p.add_argument("--list", action="store_true", help="list the available models")


def execute(args):
    if args.list:
        for name in zoo.names("forward"):
            print(f"{name:18s} {zoo.get_spec(name).description}")
        return 0
    cli_args.model_or_pair(args)
    if args.deploy and (args.pair or zoo.get_spec(args.model).deploy is None):
        args.parser.error(f"--deploy: {args.pair or args.model} has no deploy form")
    from align.pair_file import PairFileError, load_pair
    from align.runtime import configure_frameworks
    from weights_convert.checkpoint_io import CheckpointError
    configure_frameworks()
    start = time.perf_counter()
    try:
        if args.pair:
            pair = load_pair(args.pair, args.dtype)
            args.model = pair.name
            summary = align_forward(pair.torch_model, pair.paddle_model, pair.inputs, args.dtype,
                                    str(Path(args.out) / pair.name / "forward"), lambda m, t: m(**t),
                                    check=f"forward:{pair.name}", extra={"pair_file": args.pair},
                                    save_tensors=args.save_tensors)
        else:
            summary = run(args.model, args.dtype, args.out, args.weights, args.seed, args.input_shape,
                          args.save_tensors, args.allow_nonfinite, args.cast, args.deploy)
    except (CheckpointError, PairFileError) as e:
        print(f"forward_diff: error: {e}", file=sys.stderr)
        return 2
    worst = worst_key(summary, skip=lambda stats: stats.get("rule") == "exact-events")   # flips: counted, not sizes
    print(f"forward_diff {args.model} {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({summary['num_keys']} tensors, worst max_rel {worst[1]:.3e} at {worst[0]}, "
          f"first divergence: {summary['first_divergence']}, {time.perf_counter() - start:.1f}s)")
    print(f"report: {Path(args.out) / args.model / ('forward_deploy' if args.deploy else 'forward')}")
    return 0 if summary["passed"] else 1


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
