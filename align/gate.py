"""The CI gate: regenerate every alignment report, then check each one against align/thresholds.json.

    python align/gate.py --regenerate [--out reports] [--keep-tensors]   # what CI runs
    python align/gate.py [--out reports]                                 # only check reports already there

A report passes the gate when its summary says passed AND its numbers satisfy the thresholds file
(float64 keys: max_rel; float32 keys: max_abs within the noise multiple of the recorded floor): the gate does
not take a tool's word for it. With --regenerate it judges the reports it regenerated: one that is
missing or older than this run's start fails; other reports under --out (e.g. from forward_diff's default
run) are left out. A regenerated check that passed has its tensor logs (torch.npy/paddle.npy, a few hundred MB
each for the full models) deleted once it is done, unless --keep-tensors: the whole set would take several GB.
summary.json and diff.txt stay; a failed check keeps everything for debugging.
Exit status 0 iff every report passed.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.compare import THRESHOLDS, recheck  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float64", "float32")


# float32 forward checks rerun with torch's oneDNN capped at AVX2, as on a CPU without AVX-512: the
# float32 verdict must not depend on the CPU (align/compare.py)
ISA_RERUNS = {"float32-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}


def regeneration_commands(out):
    """(report folder relative to out, argv, extra environment) for every check CI regenerates."""
    py = sys.executable
    cmds = []
    for dtype in DTYPES:
        base = Path(out) / dtype
        for model in ("resnet50", "retina_r50", "retina_r50_tv"):
            cmds.append((f"{dtype}/{model}/forward",
                         [py, "align/forward_diff.py", "--model", model, "--dtype", dtype, "--out", str(base)]))
        cmds.append((f"{dtype}/losses", [py, "align/loss_diff.py", "--loss", "all", "--dtype", dtype,
                                         "--out", str(base)]))
        cmds.append((f"{dtype}/data", [py, "align/data_diff.py", "--dtype", dtype, "--out", str(base),
                                       "--short-side", "128", "--max-size", "160"]))
        for model in ("resnet50", "retina_r50", "retina_r50_ghm", "retina_r50_aploss"):
            cmds.append((f"{dtype}/{model}/backward",
                         [py, "align/backward_diff.py", "--model", model, "--dtype", dtype, "--out", str(base)]))
        cmds.append((f"{dtype}/retina_r50/metric", [py, "align/metric_diff.py", "--dtype", dtype, "--out", str(base)]))
    # training: ten steps of every variant in float64; in float32 (which reruns float64 for its floor) the
    # AP-Loss variant is left out: train_diff does not replay float32's ReLU decisions yet (backward_diff
    # does), and its first step's gradient norm carries those flips (README, known limits)
    for dtype, models in (("float64", ("retina_r50", "retina_r50_aploss", "retina_r50_ghm")),
                          ("float32", ("retina_r50", "retina_r50_ghm"))):
        for model in models:
            cmds.append((f"{dtype}/{model}/train", [py, "align/train_diff.py", "--model", model, "--steps", "10",
                                                   "--dtype", dtype, "--no-checkpoint", "--out", str(Path(out) / dtype)]))
    cmds = [(folder, cmd, {}) for folder, cmd in cmds]
    for label, env in ISA_RERUNS.items():
        for model in ("resnet50", "retina_r50", "retina_r50_tv"):
            cmds.append((f"{label}/{model}/forward", [py, "align/forward_diff.py", "--model", model, "--dtype",
                                                      "float32", "--out", str(Path(out) / label)], env))
    return cmds


def prune_tensor_logs(folder):
    """Delete the reprod_log tensor files (*.npy) and checkpoints under a report folder; returns bytes freed."""
    freed = 0
    for path in list(Path(folder).rglob("*.npy")) + list(Path(folder).rglob("*.pkl")):
        freed += path.stat().st_size
        path.unlink()
    return freed


def check_keys(summary):
    """Re-check a summary's numbers against the thresholds, key by key and by the rule each key records
    (align.compare.recheck); returns a list of offending keys."""
    train = summary.get("check", "").startswith("train")
    fp64_limit = THRESHOLDS["float64_train_max_rel"] if train else THRESHOLDS["float64_max_rel"]
    metric_limit = THRESHOLDS.get(f"metric_{summary.get('dtype')}_max_abs", 0.0)
    return [name for name, st in summary.get("keys", {}).items()
            if not isinstance(st, dict)
            or recheck(st, fp64_limit, THRESHOLDS["float32_noise_multiple"], metric_limit) is not None]


def gate(out, since=None, expected=()):
    rows, ok = [], True
    summaries = sorted(Path(out).rglob("summary.json"))
    if expected:   # a regenerating run judges what it regenerated, not reports a user left under out
        summaries = [p for p in summaries
                     if any(str(p.parent.relative_to(out)) == f or str(p.parent.relative_to(out)).startswith(f + "/")
                            for f in expected)]
    found = {str(p.parent.relative_to(out)) for p in summaries}
    for folder in expected:
        if not any(f == folder or f.startswith(folder + "/") for f in found):
            rows.append((folder, "MISSING", "no summary.json was generated"))
            ok = False
    for path in summaries:
        rel = str(path.parent.relative_to(out))
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            rows.append((rel, "FAIL", f"unreadable summary: {e}"))
            ok = False
            continue
        if "keys" not in summary:           # an aggregate (e.g. losses/summary.json): its parts are checked
            continue
        if since is not None and path.stat().st_mtime < since:
            rows.append((rel, "STALE", "not regenerated in this run"))
            ok = False
            continue
        bad = check_keys(summary)
        passed = summary.get("passed") is True and not bad and summary.get("keys")
        ok &= bool(passed)
        worst = summary.get("worst_passed_ratio") or {}
        detail = f"{len(summary['keys'])} keys, worst ratio {worst.get('ratio', float('nan')):.2f} at " \
            f"{worst.get('key')}" if passed else \
            f"first divergence {summary.get('first_divergence')}; out of threshold: {bad[:5]}"
        rows.append((rel, "ok" if passed else "FAIL", detail))
    width = max([len(r[0]) for r in rows] + [10])
    for rel, status, detail in rows:
        print(f"gate: {rel:<{width}}  {status:<7} {detail}")
    print(f"gate: {'PASSED' if ok and rows else 'FAILED'} ({len(rows)} reports)")
    return ok and bool(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports")
    p.add_argument("--regenerate", action="store_true", help="run every alignment check first (CI)")
    p.add_argument("--keep-tensors", action="store_true",
                   help="keep the tensor logs of regenerated checks that passed (several GB in all)")
    args = p.parse_args(argv)
    since, expected = None, ()
    if args.regenerate:
        since = time.time()
        cmds = regeneration_commands(args.out)
        expected = [folder for folder, _, _ in cmds]
        for folder, cmd, env in cmds:
            start = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
            tail = (res.stdout.strip().splitlines() or [""])[-1]
            print(f"gate: ran {' '.join(f'{k}={v}' for k, v in env.items())}{' ' if env else ''}"
                  f"{' '.join(cmd[1:])} -> exit {res.returncode} in {time.perf_counter() - start:.0f}s"
                  f"  {tail}", flush=True)
            if res.returncode not in (0, 1):       # 1 = check failed (the gate reports it); else a crash
                print(res.stderr[-3000:], file=sys.stderr)
            if res.returncode == 0 and not args.keep_tensors:
                prune_tensor_logs(Path(args.out) / folder)
    return 0 if gate(args.out, since, expected) else 1


if __name__ == "__main__":
    sys.exit(main())
