"""Train both frameworks side by side on identical batches and compare every step.

    python align/train_diff.py --model retina_r50_ghm [--steps 10] [--dtype float32|float64] [--data DIR]
                               [--out DIR] [--seed N] [--resume]

Per step it logs the total loss and each term, the learning rate, the gradient norm and global parameter
statistics, plus the loss modules' state (GHM acc_sum). Recipe: align/training.py. float64: every logged
value within max_rel 1e-8 at every step; float32: the same values are also run in float64 on both sides and
the report shows, step by step, the cross-framework difference next to each framework's float32 noise. The
float32 verdict: the float64 twins agree within 1e-8 at every step, and the first step (same weights, same
batch) passes the noise-floor rule. Later steps are reported, not judged, against the floor: from the first
update on, each trajectory carries its own amplified rounding (GHM rebins, ReLU masks move), so the smaller
noise stops being a bound for the cross difference, and the larger one is one by construction.
BatchNorm runs with frozen statistics (norm_eval, as RetinaNet trains), so Paddle's biased vs torch's
unbiased running-variance update does not arise; the report says so.
Writes DIR/<model>/train/{torch.npy, paddle.npy, diff.txt, summary.json, curves.png}. While it runs,
checkpoint_<dtype>.pkl holds both sides after the last completed step (both models and optimizers: about a GB
for float64), so --resume continues an interrupted run; a completed run deletes it unless --keep-checkpoint.
--no-checkpoint skips writing it (the CI gate never resumes).
Exit 0 iff passed.
"""
import argparse
import pickle
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.atomic import atomic_path  # noqa: E402
from align.compare import FP64_TRAIN_MAX_REL, compare_runs, judge_on_float64_twins  # noqa: E402
from align.hooks import paddle_to_numpy, torch_to_numpy  # noqa: E402
from align.report import rule_text, write_report  # noqa: E402
from align.runtime import configure_frameworks  # noqa: E402
from align.train_data import first_batches  # noqa: E402
from align.training import (TRAIN_MODELS, PaddleTrainer, Recipe, TorchTrainer, build_training_pair,  # noqa: E402
                            loss_state, param_stats)

BN_NOTE = ("BatchNorm uses frozen running statistics (norm_eval=True, RetinaNet's setting): Paddle's biased "
           "and torch's unbiased running-variance updates never run, so they cannot cause a difference.")


class Side:
    """One framework's model, loss, trainer and the per-step values it logged."""

    def __init__(self, fw, model, loss, recipe):
        self.fw, self.model, self.loss = fw, model, loss
        self.trainer = (TorchTrainer if fw == "torch" else PaddleTrainer)(model, loss, recipe)
        self.seconds = 0.0

    def numpy_params(self):
        """The trainer's parameters (Paddle also lists BatchNorm statistics among its parameters), uncopied
        where the framework allows."""
        if self.fw == "torch":
            return {n: p.detach().numpy() for n, p in self.trainer.named}
        return {n: p.numpy() for n, p in self.trainer.named}

    def step(self, i, batch):
        start = time.perf_counter()
        values = self.trainer.step(i, batch)
        self.seconds += time.perf_counter() - start
        values.update(param_stats(self.numpy_params()))
        to_np = torch_to_numpy if self.fw == "torch" else paddle_to_numpy
        values.update({f"state.{k}": v for k, v in loss_state(self.loss, to_np).items()})
        return values


def _rename_prefixes(state, names):
    """Keys of an optimizer state that start with a parameter's name + '_' get the mapped name instead."""
    out = {}
    for key, value in state.items():
        old = max((n for n in names if key.startswith(n + "_")), key=len, default=None)
        out[key if old is None else names[old] + key[len(old):]] = value
    return out


def _opt_state(side):
    """Paddle keys its optimizer state by generated parameter names (conv2d_154.w_0_velocity_0), which depend
    on how many layers the process built before: the checkpoint stores structured names instead."""
    state = side.trainer.opt.state_dict()
    if side.fw == "paddle":
        state = _rename_prefixes(state, {p.name: n for n, p in side.model.named_parameters()})
    return state


def _state(side):
    return {"model": side.model.state_dict(), "loss": side.loss.state_dict(),
            "opt": _opt_state(side), "seconds": side.seconds}


def train(name, steps, dtype, data, seed, ckpt=None, resume=False, progress=True):
    """Run `steps` steps on both sides; returns ({key: array} torch, paddle, seconds per side)."""
    batches, num_classes = first_batches(data, steps, dtype, seed)
    t_model, t_loss, p_model, p_loss = build_training_pair(name, num_classes, seed, dtype)
    recipe = Recipe()
    sides = [Side("torch", t_model, t_loss, recipe), Side("paddle", p_model, p_loss, recipe)]
    logs = [OrderedDict(), OrderedDict()]
    start_step = 0
    if resume and ckpt and Path(ckpt).is_file():
        with open(ckpt, "rb") as f:
            saved = pickle.load(f)          # our own file, written below: not untrusted input
        start_step, logs = saved["step"], saved["logs"]
        for side, st in zip(sides, saved["sides"]):
            _load_state(side, st)
    for i in range(start_step, steps):
        for side, log, batch in zip(sides, logs, batches[i]):
            for k, v in side.step(i, batch).items():
                log[f"step{i:03d}.{k}"] = np.asarray(v, dtype=np.float64).reshape(-1)
        if ckpt:
            with atomic_path(ckpt) as tmp, open(tmp, "wb") as f:
                pickle.dump({"step": i + 1, "logs": logs, "sides": [_state(s) for s in sides]}, f)
        if progress:
            t, p = (log[f"step{i:03d}.loss"][0] for log in logs)
            print(f"train_diff {name} {dtype}: step {i + 1}/{steps} loss torch {t:.10g} paddle {p:.10g}",
                  flush=True)
    return logs[0], logs[1], {s.fw: s.seconds / max(steps - start_step, 1) for s in sides}


def _load_state(side, st):
    if side.fw == "torch":
        side.model.load_state_dict(st["model"])
        side.loss.load_state_dict(st["loss"])
        side.trainer.opt.load_state_dict(st["opt"])
    else:
        side.model.set_state_dict(st["model"])
        side.loss.set_state_dict(st["loss"])
        side.trainer.opt.set_state_dict(
            _rename_prefixes(st["opt"], {n: p.name for n, p in side.model.named_parameters()}))
    side.seconds = st["seconds"]


def judge_later_steps_on_float64(results):
    """float32 keys after the first step: passed iff the float64 twins agree (see the module docstring)."""
    for key, st in results.items():
        if not key.startswith("step000.") and "float64_max_rel" in st:
            judge_on_float64_twins(st, FP64_TRAIN_MAX_REL)


def plot_curves(path, t_log, p_log, steps, title, t64=None, p64=None):
    """Loss curves of both frameworks, and |torch - paddle| per term on a log scale; given the float64 runs
    (float32 reports), also each framework's float32 noise on the total loss, the floor it is measured against."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(1, steps + 1)
    series = lambda log, k: np.array([log[f"step{i:03d}.{k}"][0] for i in range(steps)])  # noqa: E731
    keys = [k.split(".", 1)[1] for k in t_log if k.startswith("step000.loss")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in keys:
        axes[0].plot(x, series(t_log, k), "-o", label=f"torch {k}")
        axes[0].plot(x, series(p_log, k), "--x", label=f"paddle {k}")
        diff = np.abs(series(t_log, k) - series(p_log, k))
        axes[1].semilogy(x, np.maximum(diff, 1e-18), "-o", label=k)
    if t64 is not None:
        for fw, log, log64 in (("torch", t_log, t64), ("paddle", p_log, p64)):
            noise = np.abs(series(log, "loss") - series(log64, "loss"))
            axes[1].semilogy(x, np.maximum(noise, 1e-18), ":", label=f"{fw} float32 noise (loss)")
    axes[0].set(title=f"{title}: losses", xlabel="step")
    axes[1].set(title="|torch - paddle| (log scale)", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def run(name, steps=10, dtype="float64", data=None, out="reports", seed=0, resume=False, keep_checkpoint=False,
        checkpoint=True):
    out_dir = Path(out) / name / "train"
    ckpts = [out_dir / f"checkpoint_{dtype}.pkl"]
    t, p, sec = train(name, steps, dtype, data, seed, ckpts[0] if checkpoint else None, resume)
    t64 = p64 = None
    if dtype == "float32":
        ckpts.append(out_dir / "checkpoint_float64.pkl")
        t64, p64, _ = train(name, steps, "float64", data, seed, ckpts[1] if checkpoint else None, resume)
    results = compare_runs(dtype, t, p, t64, p64, fp64_max_rel=FP64_TRAIN_MAX_REL)
    if dtype == "float32":
        judge_later_steps_on_float64(results)
    if not keep_checkpoint:
        for ckpt in ckpts:
            ckpt.unlink(missing_ok=True)
    plot_curves(out_dir / "curves.png", t, p, steps, f"{name} ({dtype})", t64, p64)
    per_step = lambda field: [max(v.get(field, 0.0) for k, v in results.items()  # noqa: E731
                                  if k.startswith(f"step{i:03d}.")) for i in range(steps)]
    growth = {"worst_max_rel_per_step": per_step("max_rel")}
    if dtype == "float32":
        growth.update(worst_ratio_to_floor_per_step=per_step("ratio_to_floor"),
                      worst_float64_max_rel_per_step=per_step("float64_max_rel"),
                      rule=rule_text(dtype, FP64_TRAIN_MAX_REL) + "; the noise-floor part at step 0 only, later "
                      "steps pass iff their float64 twins agree (their float32 difference is reported)")
    summary = write_report(str(out_dir), f"train:{name}", dtype, {k: t[k] for k in results},
                           {k: p[k] for k in results}, results, order=list(results),
                           extra={"model": name, "steps": steps, "seed": seed, "recipe": vars(Recipe()),
                                  **growth,
                                  "seconds_per_step": sec, "paddle_over_torch_time": sec["paddle"] / sec["torch"],
                                  "notes": BN_NOTE, "plot": "curves.png"},
                           fp64_max_rel=FP64_TRAIN_MAX_REL)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(TRAIN_MODELS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--data", help="COCO-format directory (default: the bundled synthetic set)")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from the last completed step")
    ap.add_argument("--keep-checkpoint", action="store_true",
                    help="keep checkpoint_<dtype>.pkl after the run (to --resume it later with more --steps)")
    ap.add_argument("--no-checkpoint", action="store_true",
                    help="do not write the per-step checkpoint (about a GB per step in float64; no --resume)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    configure_frameworks()
    if args.no_checkpoint and (args.resume or args.keep_checkpoint):
        ap.error("--no-checkpoint cannot be combined with --resume or --keep-checkpoint")
    summary = run(args.model, args.steps, args.dtype, args.data, args.out, args.seed, args.resume,
                  args.keep_checkpoint, checkpoint=not args.no_checkpoint)
    sec = summary["seconds_per_step"]
    print(f"train_diff {args.model} {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({args.steps} steps, first divergence: {summary['first_divergence']}, "
          f"s/step torch {sec['torch']:.2f} paddle {sec['paddle']:.2f})")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
