"""Train both frameworks side by side on identical batches and compare every step (train_diff's library).

    summary = run_train("retina_r50_ghm", steps=10, dtype="float64", out="reports")

Per step it logs the total loss and each term, the learning rate, the gradient norm and global parameter
statistics, plus the loss modules' state (GHM acc_sum). Model, loss and recipe: the zoo spec's TrainSpec
(align/training.py runs it). float64: every logged value within max_rel 1e-8 at every step; float32: the same
values are also run in float64 on both sides and the report shows, step by step, the cross-framework
difference next to each framework's float32 noise; the first step (same weights, same batch) passes the
noise-floor rule and later ones are judged on their float64 twins (align.compare.judge_after_first_step).
While it runs, checkpoint_<dtype>.pkl holds both sides after the last completed step, so resume=True
continues an interrupted run; a completed run deletes it unless keep_checkpoint.
"""
from __future__ import annotations

import os
import pickle
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from align import frameworks, known_differences
from align.backward import projection_objective
from align.compare import FP64_TRAIN_MAX_REL, check_dtype, compare_runs, judge_after_first_step, rule_text
from align.forward import call_model
from align.plots import plot_curves
from align.progress import progress
from align.report import write_report
from align.train_data import first_batches
from align.training import Recipe, Trainer, build_training_pair, loss_state, param_stats
from align.zoo import TrainSpec, get_spec
from twin_common.atomic import atomic_path


class Side:
    """One framework's model, loss, trainer and the per-step values it logged."""

    def __init__(self, model, loss, train):
        self.fw, self.model, self.loss = frameworks.of(model), model, loss
        self.trainer = Trainer(model, loss, train)
        self.seconds = 0.0

    def step(self, i: int, batch: dict) -> dict:
        start = time.perf_counter()
        values = self.trainer.step(i, batch)
        self.seconds += time.perf_counter() - start
        # the trainer's parameters (Paddle also lists BatchNorm statistics among its parameters)
        values.update(param_stats(self.fw.param_arrays(self.trainer.named)))
        if self.loss is not None and self.fw.is_module(self.loss):
            values.update({f"state.{k}": v for k, v in loss_state(self.loss).items()})
        return values

    def state(self) -> dict:
        return {"model": self.fw.state_dict(self.model), "loss": self.fw.state_dict(self.loss),
                "opt": self.fw.opt_state(self.trainer.opt, self.model), "seconds": self.seconds}

    def load(self, st: dict) -> None:
        self.fw.load_state_dict(self.model, st["model"])
        self.fw.load_state_dict(self.loss, st["loss"])
        self.fw.load_opt_state(self.trainer.opt, self.model, st["opt"])
        self.seconds = st["seconds"]


def train(name: str, steps: int, dtype: str, data: str | os.PathLike | None, seed: int,
          ckpt: str | os.PathLike | None = None, resume: bool = False, show: bool = True
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """Run `steps` steps on both sides; returns ({key: array} torch, paddle, seconds per step per side)."""
    spec = get_spec(name)
    batches, num_classes = first_batches(data, steps, dtype, seed)
    t_model, t_loss, p_model, p_loss = build_training_pair(spec, num_classes, seed, dtype)
    sides = [Side(t_model, t_loss, spec.train), Side(p_model, p_loss, spec.train)]
    logs = [OrderedDict(), OrderedDict()]
    start_step = 0
    if resume and ckpt and Path(ckpt).is_file():
        with open(ckpt, "rb") as f:
            saved = pickle.load(f)          # our own file, written below: not untrusted input
        start_step, logs = saved["step"], saved["logs"]
        for side, st in zip(sides, saved["sides"]):
            side.load(st)
    for i in progress(range(start_step, steps), f"train {name} {dtype}", steps - start_step):
        for side, log, batch in zip(sides, logs, batches[i]):
            for k, v in side.step(i, batch).items():
                log[f"step{i:03d}.{k}"] = np.asarray(v, dtype=np.float64).reshape(-1)
        if ckpt:
            with atomic_path(ckpt) as tmp, open(tmp, "wb") as f:
                pickle.dump({"step": i + 1, "logs": logs, "sides": [s.state() for s in sides]}, f)
    return logs[0], logs[1], {s.fw.name: s.seconds / max(steps - start_step, 1) for s in sides}


def run_train(name: str, steps: int = 10, dtype: str = "float64", data: str | os.PathLike | None = None,
              out: str | os.PathLike = "reports", seed: int = 0, resume: bool = False,
              keep_checkpoint: bool = False, checkpoint: bool = True) -> dict:
    """train_diff's check: both dtypes' runs as needed, the verdict, the report and curves.png."""
    spec = get_spec(name)
    out_dir = Path(out) / name / "train"
    ckpts = [out_dir / f"checkpoint_{dtype}.pkl"]
    t, p, sec = train(name, steps, dtype, data, seed, ckpts[0] if checkpoint else None, resume)
    t64 = p64 = None
    if dtype == "float32":
        ckpts.append(out_dir / "checkpoint_float64.pkl")
        t64, p64, _ = train(name, steps, "float64", data, seed, ckpts[1] if checkpoint else None, resume)
    if not keep_checkpoint:
        for ckpt in ckpts:
            ckpt.unlink(missing_ok=True)
    return train_report(out_dir, f"train:{name}", dtype, t, p, t64, p64, steps, spec.train.recipe, sec,
                        {"model": name, "seed": seed, "notes": spec.train.notes})


def train_report(out_dir: str | os.PathLike, check: str, dtype: str, t: dict, p: dict, t64: dict | None,
                 p64: dict | None, steps: int, recipe: Any, sec: dict, extra: dict) -> dict:
    """The verdict over every step (align.compare's train rules), the report and curves.png."""
    results = compare_runs(dtype, t, p, t64, p64, fp64_max_rel=FP64_TRAIN_MAX_REL)
    if dtype == "float32":
        judge_after_first_step(results)
    plot_curves(Path(out_dir) / "curves.png", t, p, steps, f"{check} ({dtype})", t64, p64)

    def per_step(field):
        return [max(v.get(field, 0.0) for k, v in results.items() if k.startswith(f"step{i:03d}."))
                for i in range(steps)]
    growth = {"worst_max_rel_per_step": per_step("max_rel")}
    if dtype == "float32":
        growth.update(worst_ratio_to_floor_per_step=per_step("ratio_to_floor"),
                      worst_float64_max_rel_per_step=per_step("float64_max_rel"),
                      rule=rule_text(dtype, FP64_TRAIN_MAX_REL) + "; the noise-floor part at step 0 only, later "
                      "steps pass iff their float64 twins agree (their float32 difference is reported)")

    def explain(first):
        if first is None:
            return {}
        ctx = known_differences.Context("train", dtype, first, results[first], t.get(first), p.get(first),
                                        recipe=recipe)
        return {"diagnosis": {"first_divergence": {"key": first, "module": None, "torch_class": None,
                                                   "paddle_class": None, "locality": "step",
                                                   "known_difference": known_differences.match(ctx)}}}
    return write_report(str(out_dir), check, dtype, {k: t[k] for k in results}, {k: p[k] for k in results},
                        results, order=list(results),
                        extra={**extra, "steps": steps, "recipe": vars(recipe), **growth, "seconds_per_step": sec,
                               "paddle_over_torch_time": sec["paddle"] / sec["torch"], "plot": "curves.png"},
                        fp64_max_rel=FP64_TRAIN_MAX_REL, explain=explain)


def _pair_step_losses(objectives, keyword, seed):
    """TrainSpec.step_losses for any pair: batch = (step, {name: ndarray}), the arrays as the model's dtype,
    the objective per side (the projection is seeded by seed + step)."""
    def step_losses(model, loss, batch):
        step, arrays = batch
        fw = frameworks.of(model)
        dtype = next(fw.dtype_name(p) for _, p in fw.named_trainable(model))
        tensors = {k: fw.tensor(v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v)
                   for k, v in arrays.items()}
        out = call_model(model, tensors, keyword)
        objective = objectives[fw.name]
        if objective is None:
            return {"loss": projection_objective(model, out, dtype, seed + step)}
        return {"loss": objective(out)}
    return step_losses


def align_train(torch_model: Any, paddle_model: Any, batches: Callable[[int], dict] | dict, dtype: str,
                out_dir: str | os.PathLike, steps: int = 3, objective_fns: tuple | None = None,
                recipe: Any = None, seed: int = 0, keyword: bool = False, check: str = "train") -> dict:
    """`steps` SGD steps (momentum, the recipe's schedule and clipping) of any pair on identical batches, the
    Paddle model starting from the torch model's weights; logs per step what train_diff logs and judges it
    by the same rules. batches: step -> {name: ndarray}, or one dict for every step; objective_fns: (torch
    loss(outputs), Paddle loss(outputs)), default the seeded projection of the outputs (seed + step).
    In float32 both models also train in float64 from the same start, for the noise floor. The models are
    left as the last run trained them."""
    from weights_convert.transfer import copy_torch_to_paddle
    check_dtype(dtype)
    recipe = recipe or Recipe(base_lr=0.01, warmup_steps=0, decay_steps=())
    t_obj, p_obj = objective_fns or (None, None)
    train = TrainSpec(lambda m, n: None, lambda m, n: None,
                      _pair_step_losses({"torch": t_obj, "paddle": p_obj}, keyword, seed), recipe,
                      no_decay=lambda name: name.endswith("bias"))
    get_batch = batches if callable(batches) else (lambda step: batches)
    t_fw = frameworks.of(torch_model)
    start = t_fw.numpy_state(torch_model)              # both dtypes' runs start from these weights

    def run(run_dtype):
        t_fw.load_state_dict(torch_model, {k: t_fw.tensor(v) for k, v in start.items()})
        for model in (torch_model, paddle_model):
            frameworks.of(model).cast(model, "float64")
        copy_torch_to_paddle(torch_model, paddle_model)
        for model in (torch_model, paddle_model):
            frameworks.of(model).cast(model, run_dtype)
        sides = [Side(torch_model, None, train), Side(paddle_model, None, train)]
        logs = [OrderedDict(), OrderedDict()]
        for i in progress(range(steps), f"train {run_dtype}", steps):
            batch = (i, get_batch(i))
            for side, log in zip(sides, logs):
                for k, v in side.step(i, batch).items():
                    log[f"step{i:03d}.{k}"] = np.asarray(v, dtype=np.float64).reshape(-1)
        return logs[0], logs[1], {s.fw.name: s.seconds / steps for s in sides}
    t, p, sec = run(dtype)
    t64, p64 = run("float64")[:2] if dtype == "float32" else (None, None)
    return train_report(out_dir, check, dtype, t, p, t64, p64, steps, recipe, sec, {})
