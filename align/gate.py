"""The CI gate: regenerate every alignment report, then check each one against align/thresholds.json.

    python align/gate.py --regenerate [--out reports] [--keep-tensors]   # what CI runs
    python align/gate.py [--out reports]                                 # only check reports already there

A report passes the gate when its summary says passed AND its numbers satisfy the thresholds file
(float64 keys: max_rel; float32 keys: max_abs within the noise multiple of the recorded floor): the gate does
not take a tool's word for it. The checks and their limits come from align/manifest.py. With --regenerate
it judges the reports it regenerated: one that is missing or older than this run's start fails; other
reports under --out (e.g. from forward_diff's default run) are left out. A regenerated check that passed
has its tensor logs (torch.npy/paddle.npy, a few hundred MB each for the full models) deleted once it is
done, unless --keep-tensors: the whole set would take several GB.
summary.json and diff.txt stay; a failed check keeps everything for debugging. The gate also refuses a
report whose folder is not whole (its files are not those its summary's run wrote: align/report_folder.py),
one that compared nothing, and a check that ran past ALIGN_GATE_TIMEOUT seconds (default 1200).
Checks run two at a time by default (ALIGN_GATE_JOBS), each on its share of the CPUs.
Exit status 0 iff every report passed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args, manifest  # noqa: E402
from align.compare import THRESHOLDS, limits_for, recheck  # noqa: E402
from align.progress import progress  # noqa: E402
from align.report_folder import verify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def prune_tensor_logs(folder: str | os.PathLike) -> int:
    """Delete the reprod_log tensor files (*.npy) and checkpoints under a report folder; returns bytes freed."""
    freed = 0
    for path in [p for pattern in ("*.npy", "*.npz", "*.pkl") for p in Path(folder).rglob(pattern)]:
        freed += path.stat().st_size
        path.unlink()
    return freed


def check_keys(summary: dict, limits: dict | None = None) -> list[str]:
    """Re-check a summary's numbers, key by key and by the rule each key records (align.compare.recheck),
    against the manifest's limits for its check (default: align.compare.limits_for the summary's tool);
    returns a list of offending keys."""
    if limits is None:
        limits = limits_for(summary.get("check", "").split(":", 1)[0])
    metric_limit = THRESHOLDS.get(f"metric_{summary.get('dtype')}_max_abs", 0.0)
    return [name for name, st in summary.get("keys", {}).items()
            if not isinstance(st, dict)
            or recheck(st, limits["float64_max_rel"], limits["noise_multiple"], metric_limit) is not None]


def refusal(folder: Path, summary: dict) -> str | None:
    """Why a report cannot be trusted whatever its numbers say, or None: its files are not the ones its run
    wrote (a folder mixed from two runs, a file edited or replaced), or it compared nothing."""
    problems = verify(folder, summary)
    if problems:
        return "folder not whole: " + "; ".join(problems[:4])
    compared = summary.get("elements_compared")
    if isinstance(compared, bool) or not isinstance(compared, int):
        return f"elements_compared is not a number: {compared!r}"
    if compared <= 0:
        return "compared nothing (no tensor elements)"
    return None


def gate(out: str | os.PathLike, since: float | None = None, expected: Sequence[str] = (),
         timed_out: dict[str, float] | None = None) -> bool:
    """Judge the reports under out (with expected, a regenerating run's folders: those alone, every one
    present; timed_out: {folder: seconds} of checks the regeneration stopped); prints one row per report and
    a summary line; True iff all passed."""
    rows, ok, checks, timed_out = [], True, manifest.checks(), timed_out or {}
    summaries = sorted(Path(out).rglob("summary.json"))
    if expected:   # a regenerating run judges what it regenerated, not reports a user left under out
        summaries = [p for p in summaries
                     if any(str(p.parent.relative_to(out)) == f or str(p.parent.relative_to(out)).startswith(f + "/")
                            for f in expected)]
    found = {str(p.parent.relative_to(out)) for p in summaries}
    for folder in expected:
        if not any(f == folder or f.startswith(folder + "/") for f in found):
            why = f"timed out after {timed_out[folder]:.0f} s" if folder in timed_out else \
                "no summary.json was generated"
            rows.append((folder, "MISSING", why))
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
        if rel in timed_out:
            rows.append((rel, "FAIL", f"timed out after {timed_out[rel]:.0f} s; this summary is an older run's"))
            ok = False
            continue
        refused = refusal(path.parent, summary)
        if refused:
            rows.append((rel, "FAIL", refused))
            ok = False
            continue
        check = manifest.check_for(rel, checks)
        bad = check_keys(summary, check.limits() if check else None)
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


def check_timeout() -> float:
    """Seconds one regenerated check may take (ALIGN_GATE_TIMEOUT, default 1200; the longest takes ~2 min)."""
    value = os.environ.get("ALIGN_GATE_TIMEOUT", "1200")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"ALIGN_GATE_TIMEOUT must be a number of seconds, got {value!r}") from None


def gate_jobs() -> int:
    """Checks run at once (ALIGN_GATE_JOBS, default 2 when there are 2 CPUs or more). Each check gets
    cpus // jobs framework threads: much of a check is single-threaded Python (sampling, comparison, reports),
    so two checks side by side finish sooner than one after the other with every core each."""
    value = os.environ.get("ALIGN_GATE_JOBS", "")
    if value == "":
        return 2 if (os.cpu_count() or 1) >= 2 else 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"ALIGN_GATE_JOBS must be a positive integer, got {value!r}")
    return int(value)


def _run_check(check: manifest.Check, out: str, seconds: float, threads: int, keep_tensors: bool) -> str | None:
    """Run one check; returns its folder if it timed out. Prints one line (and a crash's stderr) when done."""
    cmd = check.argv(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **check.env}
    start = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=seconds)
    except subprocess.TimeoutExpired:
        print(f"gate: ran {' '.join(cmd[1:])} -> TIMED OUT after {seconds:.0f}s", flush=True)
        return check.folder
    tail = (res.stdout.strip().splitlines() or [""])[-1]
    env_text = " ".join(f"{k}={v}" for k, v in check.env.items())
    print(f"gate: ran {env_text}{' ' if env_text else ''}{' '.join(cmd[1:])} -> exit {res.returncode} in "
          f"{time.perf_counter() - start:.0f}s  {tail}", flush=True)
    if res.returncode not in (0, 1):       # 1 = check failed (the gate reports it); else a crash
        print(res.stderr[-3000:], file=sys.stderr, flush=True)
    if res.returncode == 0 and not keep_tensors:
        prune_tensor_logs(Path(out) / check.folder)
    return None


def regenerate(out: str, keep_tensors: bool = False) -> tuple[list[str], dict[str, float]]:
    """Run every manifest check, each within check_timeout(), gate_jobs() at a time (the longest first, by
    their place in the manifest otherwise); returns the folders they write and {folder: seconds} of those
    stopped at the limit (a timeout is a failure)."""
    from concurrent.futures import ThreadPoolExecutor
    checks, seconds, jobs = manifest.checks(), check_timeout(), gate_jobs()
    for limit in manifest.limits():
        print(f"gate: known limit, not run: {limit.tool} {limit.model} {limit.dtype}: {limit.reason}")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # training runs are the longest: start them first so that no long check is left running alone at the end
    order = sorted(checks, key=lambda c: c.tool != "train")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_check, c, out, seconds, threads, keep_tensors) for c in order]
        done = [f.result() for f in progress(futures, "gate", len(futures))]
    return [c.folder for c in checks], {folder: seconds for folder in done if folder is not None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli_args.add_out(p)
    p.add_argument("--regenerate", action="store_true", help="run every alignment check first (CI)")
    p.add_argument("--keep-tensors", action="store_true",
                   help="keep the tensor logs of regenerated checks that passed (several GB in all)")


def execute(args: argparse.Namespace) -> int:
    since, expected, timed_out = None, (), {}
    if args.regenerate:
        since = time.time()
        expected, timed_out = regenerate(args.out, args.keep_tensors)
    return 0 if gate(args.out, since, expected, timed_out) else 1


def main(argv: list[str] | None = None) -> int:
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
