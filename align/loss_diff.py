"""Do the torch and Paddle losses agree with each other and with the float64 NumPy definition?

    python align/loss_diff.py --loss NAME|all [--dtype float32|float64] [--out DIR] [--seed N]
    python align/loss_diff.py --list

NAME: focal ghmc ghmr aploss smooth_l1 balanced_l1 varifocal giou dfl. Every loss runs its cases (random,
extreme logits, values on bin edges, no positives, everything ignored, a single element, a large batch;
GHM also several consecutive calls with the state compared after each) and logs loss values, gradients
w.r.t. the inputs and state from both twins and the NumPy reference (align/loss_runner.py). Writes
DIR/losses/<name>/{torch.npy, paddle.npy, numpy.npy, diff.txt, summary.json}; `--loss all` also writes
DIR/losses/summary.json. Exit status 0 iff every check passed (2 for bad arguments or a missing spec).
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args  # noqa: E402
from align.loss_runner import LOSS_NAMES, load_spec, run_spec  # noqa: E402
from align.report import worst_key  # noqa: E402
from twin_common.atomic import write_json  # noqa: E402


def run_all(names, dtype, out, seed):
    """Run the named specs; missing ones (aploss before its helper lands) are reported, not failed."""
    verdicts, missing = {}, []
    for name in names:
        spec = load_spec(name)
        if spec is None:
            missing.append(name)
            print(f"loss_diff {name}: no spec yet (align/loss_specs/{name}.py), skipped")
            continue
        start = time.perf_counter()
        summary = run_spec(spec, dtype, out, seed)
        # rows judged by the float32-events rule are left out: their raw difference is the moved bins'
        worst_name, worst = worst_key(summary, skip=lambda st: st.get("rule") in ("float32-events", "exact-events"))
        verdicts[name] = {"passed": summary["passed"], "first_divergence": summary["first_divergence"],
                          "num_keys": summary["num_keys"], "worst_max_rel": worst, "worst_key": worst_name,
                          "cases": list(summary["cases"]), "seconds": time.perf_counter() - start}
        if "bin_moves" in summary:
            verdicts[name]["bin_moves"] = {
                case: sum(m["torch_vs_paddle"] for step in steps.values() for m in step.values())
                for case, steps in summary["bin_moves"].items()}
        rebinned = sum(v.get("rule") in ("float32-events", "exact-events") for v in summary["keys"].values())
        print(f"loss_diff {name} {dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
              f"({summary['num_keys']} rows{f', {rebinned} by the float32-events rule' if rebinned else ''}, "
              f"worst max_rel {worst:.3e} at {worst_name}, "
              f"first divergence: {summary['first_divergence']}, {verdicts[name]['seconds']:.1f}s)")
    return verdicts, missing


def add_arguments(p):
    p.add_argument("--loss", help="one of " + " ".join(LOSS_NAMES) + ", or all")
    cli_args.add_dtype(p)
    cli_args.add_out(p)
    cli_args.add_seed(p, help="seed of the NumPy generator that makes every case")
    p.add_argument("--list", action="store_true", help="list the losses and whether their spec exists")


def execute(args):
    if args.list:
        for name in LOSS_NAMES:
            spec = load_spec(name)
            print(f"{name:12s} {spec.description if spec else '(no spec yet)'}")
        return 0
    if not args.loss:
        args.parser.error("--loss is required (or --list)")
    if args.loss != "all" and args.loss not in LOSS_NAMES:
        args.parser.error(f"--loss must be one of {', '.join(LOSS_NAMES)} or all, got {args.loss!r}")
    from align.runtime import configure_frameworks
    configure_frameworks()
    names = LOSS_NAMES if args.loss == "all" else (args.loss,)
    verdicts, missing = run_all(names, args.dtype, args.out, args.seed)
    if args.loss != "all":
        if missing:
            print(f"loss_diff: error: align/loss_specs/{args.loss}.py does not exist", file=sys.stderr)
            return 2
        print(f"report: {Path(args.out) / 'losses' / args.loss}")
        return 0 if verdicts[args.loss]["passed"] else 1
    passed = bool(verdicts) and all(v["passed"] for v in verdicts.values())
    write_json(Path(args.out) / "losses" / "summary.json",
               {"dtype": args.dtype, "seed": args.seed, "passed": passed, "losses": verdicts, "missing": missing})
    print(f"loss_diff all {args.dtype}: {'PASSED' if passed else 'FAILED'} "
          f"({sum(v['passed'] for v in verdicts.values())}/{len(verdicts)} losses passed"
          f"{', missing: ' + ' '.join(missing) if missing else ''}); report: {Path(args.out) / 'losses'}")
    return 0 if passed else 1


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
