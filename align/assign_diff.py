"""Do the torch and Paddle PP-YOLOE assigners agree with each other and with the float64 NumPy definition?

    python align/assign_diff.py --assigner atss|tal [--dtype float32|float64] [--out DIR] [--seed N]

atss: the static ATSS assigner (../shared/specs/ppyoloe.md A.9); tal: the task-aligned assigner (A.10). Each
runs its cases, several draws each from one generator (--seed): integer GTs centred on anchor centres (topk
ties, equal IoUs; TAL also tied metrics), padded GTs, a GT with no anchor centre inside, one GT, many
overlapping GTs (multi-GT anchors resolved by argmax), a random batch on a 320 x 320 grid; TAL on predicted
scores and boxes, ATSS with and without predicted boxes. Compared per case: assigned labels and the positive
mask (exact), assigned GT boxes and scores, torch vs Paddle and both twins' float64 runs vs the reference,
whose topk ties follow Paddle's native topk (A.14 #5). In float32 every anchor the twins assign differently
must be explained by a decision within a few float32 ulps of its boundary (align/assign_runner.py). Writes
DIR/assigners/<name>/{torch.npy, paddle.npy, numpy.npy, diff.txt, summary.json}. Exit status 0 iff the check
passed, 1 if not, 2 for bad arguments.
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args  # noqa: E402
from align.assign_cases import ASSIGNER_NAMES  # noqa: E402
from align.report import worst_key  # noqa: E402

EVENT_RULES = ("float32-events", "exact-events")


def run(name, dtype, out, seed, kinds=None):
    """Run one assigner's check, print its verdict line; returns the summary."""
    from align.assign_runner import run_assigner
    start = time.perf_counter()
    summary = run_assigner(name, dtype, out, seed, kinds)
    # rows judged by the events rules are left out: their raw difference is the flipped anchors'
    worst_name, worst = worst_key(summary, skip=lambda st: st.get("rule") in EVENT_RULES)
    flips = sum(c.get("flips", {}).get("anchors", 0) for c in summary["cases"].values())
    print(f"assign_diff {name} {dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({summary['num_keys']} rows, {len(summary['cases'])} cases"
          f"{f', {flips} anchors flipped by float32 rounding' if flips else ''}, "
          f"worst max_rel {worst:.3e} at {worst_name}, first divergence: {summary['first_divergence']}, "
          f"{time.perf_counter() - start:.1f}s)")
    return summary


def add_arguments(p):
    p.add_argument("--assigner", required=True, choices=ASSIGNER_NAMES,
                   help="atss (static ATSS, A.9) or tal (task-aligned, A.10)")
    cli_args.add_dtype(p)
    cli_args.add_out(p)
    cli_args.add_seed(p, help="seed of the NumPy generator that makes every case")


def execute(args):
    from align.runtime import configure_frameworks
    configure_frameworks()
    summary = run(args.assigner, args.dtype, args.out, args.seed)
    print(f"report: {Path(args.out) / 'assigners' / args.assigner}")
    return 0 if summary["passed"] else 1


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
