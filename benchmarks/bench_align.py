"""What does forward alignment cost at a real image size? Peak memory, wall time and report size of
align_forward on a zoo model (retina_r50 by default), against the plain forward passes it needs.

    python benchmarks/bench_align.py            # 2x3x800x1344 (a COCO batch) and 1x3x512x640, both dtypes
    python benchmarks/bench_align.py --quick    # 1x3x128x160 once, smoke test (tests/test_benchmarks.py)
    python benchmarks/bench_align.py --model ppyoloe_l --shape 2,3,320,320 --max-seconds 60

Each measurement runs in its own process (peak RSS is per process); build and weight copy are not timed.
Wall time on a shared VM varies by 10-20% from one process to the next (the plain passes alone: 11.8 s, then
12.8 s), so each is measured --repeat times, alignment and plain alternating, and the fastest of each is kept
(peak RSS: the largest).
"plain" is the forward passes alignment needs, alone, in eval mode without hooks: float64 alignment needs torch
and Paddle in float64; float32 alignment needs both in float32 and float64 (the noise floor) and torch's float32
pass again on its other convolution backend (the envelope that makes the verdict hold on every CPU,
align/compare.py), five passes: the float32 rows also give that pass's seconds and the ratio against the other
four. Targets: peak RSS <= 12 GB at 2x3x800x1344,
<= 5 GB at 1x3x512x640 in float64, a report <= 100 MB, alignment wall time <= 1.5x the plain passes.
With --shape: that size alone, and with --max-seconds a wall-time target for each dtype's alignment.
Exit 1 when a target is missed (not checked with --quick).
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.targets import take_turns  # noqa: E402

GB = 1 << 30

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from align.runtime import configure_frameworks
configure_frameworks()
from align import frameworks, zoo
mode, dtype, shape, out, model = {mode!r}, {dtype!r}, {shape!r}, {out!r}, {model!r}
spec = zoo.get_spec(model)
t, p = zoo.build_models(spec, None, 0)
inputs = spec.inputs(0, shape)
start = time.perf_counter()
report, variant = 0, 0.0                # variant: the plain run's pass on torch's other kernels
if mode == "plain":
    import contextlib
    from align.forward import torch_kernel_variant
    runs = [(t, "float64", False), (p, "float64", False)]
    if dtype == "float32":             # the five passes float32 alignment makes: torch's other kernels too
        runs = [(t, "float32", False), (p, "float32", False), (t, "float32", True)] + runs
    for model, run_dtype, other_kernels in runs:
        started = time.perf_counter()
        fw = frameworks.of(model)
        fw.set_mode(fw.cast(model, run_dtype), train=False)
        tensors = {{k: fw.tensor(v.astype(run_dtype)) for k, v in inputs.items()}}
        with fw.no_grad(), (torch_kernel_variant() if other_kernels else contextlib.nullcontext()):
            spec.outputs(model, tensors)
        del tensors
        if other_kernels:
            variant = time.perf_counter() - started
else:                                   # what forward_diff.run does once the pair is built
    from align.forward import align_forward
    view = spec.float64_view(t, shape) if spec.float64_view else None
    summary = align_forward(t, p, inputs, dtype, str(Path(out) / model / "forward"), spec.outputs,
                            check=f"forward:{{model}}", extra={{"model": model, "seed": 0}}, float64_view=view)
    assert summary["passed"], summary["first_divergence"]
    report = sum(f.stat().st_size for f in (Path(out) / model / "forward").rglob("*") if f.is_file())
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "report_bytes": report, "variant_seconds": variant}}))
"""


def measure(mode, dtype, shape, model="retina_r50"):
    with tempfile.TemporaryDirectory() as out:
        code = CHILD.format(root=str(ROOT), mode=mode, dtype=dtype, shape=tuple(shape), out=out, model=model)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench_align: {mode} {dtype} {shape} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved(dtype, shape, model, repeat):
    """(alignment, plain): `repeat` measurements of each, alternating so that a slow spell of the machine hits
    both; of each the fastest run (plain: with its variant seconds) and the largest peak RSS."""
    runs = take_turns({mode: (lambda mode=mode: measure(mode, dtype, shape, model)) for mode in ("align", "plain")},
                      repeat)
    best = {}
    for mode, got in runs.items():
        best[mode] = dict(min(got, key=lambda r: r["seconds"]))
        best[mode]["peak_rss"] = max(r["peak_rss"] for r in got)
    return best["align"], best["plain"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small size, targets not checked")
    ap.add_argument("--only", choices=("coco", "512"), help="one of the two sizes")
    ap.add_argument("--model", default="retina_r50", help="a zoo model (default retina_r50)")
    ap.add_argument("--shape", type=lambda t: tuple(int(v) for v in t.split(",")), help="N,3,H,W: this size alone")
    ap.add_argument("--max-seconds", type=float, help="wall-time target of each dtype's alignment")
    ap.add_argument("--repeat", type=int, help="measurements of each, the fastest kept (default 3; --quick 1)")
    args = ap.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        ap.error("--repeat must be at least 1")
    cases = [((1, 3, 128, 160), None)] if args.quick else [((2, 3, 800, 1344), 12 * GB), ((1, 3, 512, 640), 5 * GB)]
    cases = [c for c in cases if args.only is None or (c[0][0] == 2) == (args.only == "coco")]
    if args.shape:
        cases = [(args.shape, None)]
    ok = True
    print(f"{'shape':>16} {'dtype':>8} {'align s':>8} {'plain s':>8} {'ratio':>6} {'align RSS':>10} "
          f"{'plain RSS':>10} {'report':>9}  targets")
    for shape, rss_target in cases:
        for dtype in ("float64", "float32"):
            a, b = interleaved(dtype, shape, args.model, repeat)
            ratio = a["seconds"] / b["seconds"]
            checks = []
            if rss_target is not None and (dtype == "float64" or shape[0] == 2):
                checks.append(("RSS", a["peak_rss"] <= rss_target, f"<= {rss_target / GB:.0f} GB"))
            if not args.quick:
                checks += [("report", a["report_bytes"] <= 100 * 1e6, "<= 100 MB"), ("time", ratio <= 1.5, "<= 1.5x")]
            if args.max_seconds is not None:
                checks.append(("wall", a["seconds"] <= args.max_seconds, f"<= {args.max_seconds:.0f} s"))
            ok &= all(passed for _, passed, _ in checks)
            verdict = ", ".join(f"{name} {want}: {'ok' if passed else 'MISSED'}" for name, passed, want in checks)
            verdict = verdict or "n/a (quick)"
            if b["variant_seconds"]:
                four = a["seconds"] / (b["seconds"] - b["variant_seconds"])
                verdict += (f"; of which torch's other kernels {b['variant_seconds']:.1f} s "
                            f"({four:.2f}x the other four)")
            print(f"{'x'.join(map(str, shape)):>16} {dtype:>8} {a['seconds']:8.1f} {b['seconds']:8.1f} {ratio:6.2f} "
                  f"{a['peak_rss'] / GB:9.2f}G {b['peak_rss'] / GB:9.2f}G {a['report_bytes'] / 1e6:8.2f}M  "
                  f"{verdict}", flush=True)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
