"""Is the float32 verdict the same on every CPU setting? Runs the float32 checks under each setting and
prints, per check and setting, the verdict and the worst ratio of what passed (1.0 = at the tolerance).

    python benchmarks/float32_stability.py [--checks forward,backward,loss] [--quick] [--out DIR]

Settings: ONEDNN_MAX_CPU_ISA in {unset, SSE41, AVX2, AVX512_CORE} (how torch's oneDNN kernels behave on
CPUs without AVX-512), OMP_NUM_THREADS 1 and 2, torch's oneDNN on and off (ALIGN_TORCH_ONEDNN,
align/runtime.py). --quick: unset/AVX2 only, 2 threads, oneDNN on. Each check runs in its own process,
since the ISA cap must be set before oneDNN starts. Exit 0 iff every check passed under every setting.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {
    "forward": [("forward resnet50", ["align/forward_diff.py", "--model", "resnet50"], "resnet50/forward"),
                ("forward retina_r50", ["align/forward_diff.py", "--model", "retina_r50"], "retina_r50/forward"),
                ("forward ppyoloe_l", ["align/forward_diff.py", "--model", "ppyoloe_l"], "ppyoloe_l/forward")],
    "backward": [("backward resnet50", ["align/backward_diff.py", "--model", "resnet50"], "resnet50/backward"),
                 ("backward retina_r50_aploss", ["align/backward_diff.py", "--model", "retina_r50_aploss"],
                  "retina_r50_aploss/backward"),
                 ("backward ppyoloe_s", ["align/backward_diff.py", "--model", "ppyoloe_s"], "ppyoloe_s/backward")],
    "loss": [("loss all", ["align/loss_diff.py", "--loss", "all"], "losses")],
}


def settings(quick):
    isas = ("", "AVX2") if quick else ("", "SSE41", "AVX2", "AVX512_CORE")
    threads = ("2",) if quick else ("1", "2")
    onednn = ("1",) if quick else ("1", "0")
    for isa, omp, dnn in itertools.product(isas, threads, onednn):
        env = {"OMP_NUM_THREADS": omp, "ALIGN_TORCH_ONEDNN": dnn}
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        yield f"isa={isa or 'unset'} threads={omp} onednn={'on' if dnn == '1' else 'off'}", env


def worst(folder):
    """(passed, worst passed ratio, key) over every summary.json under folder."""
    passed, ratio, key = True, 0.0, ""
    for path in sorted(Path(folder).rglob("summary.json")):
        s = json.loads(path.read_text())
        if "keys" not in s:
            continue
        passed &= bool(s["passed"])
        w = s.get("worst_passed_ratio", {})
        if w.get("ratio", 0.0) > ratio:
            ratio, key = w["ratio"], f"{path.parent.name}:{w['key']}"
    return passed, ratio, key


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", default="forward,backward,loss", help="comma-separated: forward, backward, loss")
    ap.add_argument("--quick", action="store_true", help="two ISA caps, 2 threads, oneDNN on")
    args = ap.parse_args(argv)
    groups = args.checks.split(",")
    unknown = [g for g in groups if g not in CHECKS]
    if unknown:
        print(f"float32_stability: error: --checks: unknown {unknown}; choose from {sorted(CHECKS)}", file=sys.stderr)
        return 2
    ok = True
    base_env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")}
    print(f"{'check':<28} {'setting':<40} {'verdict':<7} worst ratio")
    for label, env in settings(args.quick):
        for group in groups:
            for name, cmd, _ in CHECKS[group]:
                with tempfile.TemporaryDirectory() as out:
                    res = subprocess.run([sys.executable] + cmd + ["--dtype", "float32", "--out", out],
                                         cwd=ROOT, env={**base_env, **env}, capture_output=True, text=True)
                    passed, ratio, key = worst(out)
                passed &= res.returncode == 0
                ok &= passed
                print(f"{name:<28} {label:<40} {'ok' if passed else 'FAIL':<7} {ratio:.3f} at {key}", flush=True)
    print(f"float32_stability: {'every check passed under every setting' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
