"""Train both frameworks side by side on identical batches and compare every step (train_diff's library).

    summary = run_train("retina_r50_ghm", steps=10, dtype="float64", out="reports")

Per step it logs the total loss and each term, the learning rate, the gradient norm and global parameter
statistics, plus the loss modules' state (GHM acc_sum). Model, loss and recipe: the zoo spec's TrainSpec
(align/training.py runs it). float64: every logged value within max_rel 1e-8 at every step; float32: the same
values are also run in float64 on both sides and the report shows, step by step, the cross-framework
difference next to each framework's float32 noise; the first step (same weights, same batch) passes the
noise-floor rule and later ones are judged on their float64 twins (align.compare.judge_after_first_step).
While it runs, checkpoint_<dtype>.npz holds both sides after the last completed step, so resume=True
continues an interrupted run; a completed run deletes it unless keep_checkpoint.

The checkpoint cannot carry code (a reports folder handed over is data, not a program): one .npz of plain
arrays, read with allow_pickle=False, whose 'header.json' entry (a uint8 array) holds the format version, the
step, the run's settings and the JSON-able rest of the state (optimizer hyper-parameters, seconds). Resuming
refuses a checkpoint made with other settings that fix the trajectory (model, dtype, seed, data, batch size)
and names each difference. --steps may differ: a step's batch and learning rate depend on the step alone, so
a run of 2 steps continued to 5 gives the 5-step run's values; only a checkpoint past this run's last step is
refused. A missing checkpoint warns and starts at step 0; an unreadable one is a one-line CheckpointError.
"""
from __future__ import annotations

import json
import os
import sys
import time
import zipfile
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
from weights_convert.checkpoint_io import CheckpointError

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "align.train_align checkpoint", 1
BATCH_SIZE = 2                  # images per step; a checkpoint records it with the other settings
# the settings that fix the trajectory: a checkpoint resumes only a run that agrees on all of them
TRAJECTORY = ("model", "dtype", "seed", "data", "batch_size", "options")


class Side:
    """One framework's model, loss, trainer and the per-step values it logged."""

    def __init__(self, model, loss, train, options: dict | None = None):
        self.fw, self.model, self.loss = frameworks.of(model), model, loss
        self.trainer = Trainer(model, loss, train, options)
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
        state = {"model": self.fw.state_dict(self.model), "loss": self.fw.state_dict(self.loss),
                 "opt": self.fw.opt_state(self.trainer.opt, self.model)}
        if self.trainer.ema is not None:
            state["ema"] = self.trainer.ema.state_dict()
        return state

    def load(self, st: dict, seconds: float) -> None:
        for part, module in (("model", self.model), ("loss", self.loss)):
            # Paddle's set_state_dict only warns about missing or misshapen entries: check them here
            now = {k: tuple(v.shape) for k, v in self.fw.state_dict(module).items()}
            saved = {k: tuple(np.shape(v)) for k, v in st[part].items()}
            if now != saved:
                bad = sorted(k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k))
                raise CheckpointError(f"{self.fw.name} {part}: entries missing or of other shapes: {bad[:5]}")
        self.fw.load_state_dict(self.model, st["model"])
        self.fw.load_state_dict(self.loss, st["loss"])
        self.fw.load_opt_state(self.trainer.opt, self.model, st["opt"])
        if self.trainer.ema is not None:
            self.trainer.ema.set_state_dict(st["ema"])
        self.seconds = float(seconds)


def run_settings(name: str, dtype: str, data: str | os.PathLike | None, seed: int, steps: int,
                 options: dict | None = None) -> dict:
    """What a checkpoint records about the run that wrote it (TRAJECTORY: those that must match to resume)."""
    return {"model": name, "dtype": dtype, "seed": int(seed),
            "data": str(Path(data).resolve()) if data else "synthetic", "batch_size": BATCH_SIZE, "steps": steps,
            "options": dict(options or {})}


def run_options(train: TrainSpec, steps: int, options: dict | None) -> dict:
    """The spec's options for this run with their defaults filled in; options a spec does not take are an error
    (ValueError naming them)."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if train.options is None:
        if given:
            raise ValueError(f"this model takes no training options, got {', '.join(sorted(given))}")
        return {}
    return train.options(steps, given)


def _pack(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> dict:
    """A JSON description of a state tree; its tensors and arrays go to arrays[path]. Anything else (an
    object that would need pickling) is refused, so a checkpoint is plain data."""
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"{path}: checkpoint keys must be str or int, got {list(obj)[:3]}")
        return {"dict": [[k, _pack(v, f"{path}/{k}", arrays)] for k, v in obj.items()]}   # keeps int keys int
    if isinstance(obj, (list, tuple)):
        return {"list": [_pack(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    array = frameworks.to_numpy(obj)
    if array is None or array.dtype == object or path in arrays:
        raise TypeError(f"{path}: cannot store a {type(obj).__name__} in a checkpoint")
    arrays[path] = array
    return {"array" if isinstance(obj, np.ndarray) else "tensor": path}


def _unpack(desc: dict, arrays: dict[str, np.ndarray], fw: Any) -> Any:
    """_pack's inverse; 'tensor' leaves become fw's tensors."""
    (kind, value), = desc.items()
    if kind == "dict":
        return {k: _unpack(v, arrays, fw) for k, v in value}
    if kind == "list":
        return [_unpack(v, arrays, fw) for v in value]
    if kind == "value":
        return value
    if kind == "array":
        return arrays[value]
    if kind == "tensor":
        return fw.tensor(arrays[value])
    raise ValueError(f"unknown entry kind {kind!r}")


def save_checkpoint(path: str | os.PathLike, settings: dict, step: int, logs: list[dict], sides: list[Side]) -> None:
    """Both sides and the logs after `step` completed steps, in one .npz written atomically."""
    arrays: dict[str, np.ndarray] = {}
    tree = {"logs": _pack({s.fw.name: log for s, log in zip(sides, logs)}, "logs", arrays)}
    tree.update({s.fw.name: _pack(s.state(), s.fw.name, arrays) for s in sides})
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
              "seconds": {s.fw.name: s.seconds for s in sides}, "settings": settings, "tree": tree}
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:    # a file object: np.savez would append '.npz'
        np.savez(f, allow_pickle=False, **arrays)


def read_checkpoint(path: str | os.PathLike, settings: dict) -> tuple[dict, dict] | None:
    """(header, arrays) of the checkpoint to resume, checked against this run's settings; None (and a
    warning) when there is none. Raises CheckpointError, one line, for an unreadable or mismatched file."""
    path = Path(path)
    if not path.is_file():
        legacy = path.with_suffix(".pkl")
        note = f" ({legacy.name}, the old pickle format, is never loaded)" if legacy.is_file() else ""
        print(f"--resume: no checkpoint at {path}, starting at step 0{note}", file=sys.stderr)
        return None
    try:
        with np.load(path, allow_pickle=False) as z:      # an object array raises instead of unpickling
            header = json.loads(bytes(z["header.json"]).decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != "header.json"}
        fmt, version, step, saved = header["format"], header["version"], header["step"], dict(header["settings"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        reason = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"--resume: cannot read {path} ({type(e).__name__}: {reason}); "
                              f"delete it to start at step 0") from None
    if (fmt, version) != (CHECKPOINT_FORMAT, CHECKPOINT_VERSION):
        raise CheckpointError(f"--resume: {path} is not a checkpoint of format {CHECKPOINT_FORMAT!r} "
                              f"version {CHECKPOINT_VERSION} (got {fmt!r} version {version!r})")
    saved.setdefault("options", {})                 # written before training options existed
    differing = [k for k in TRAJECTORY if saved.get(k) != settings[k]]
    if differing:
        raise CheckpointError(f"--resume: {path.name} was made with "
                              f"{', '.join(f'{k} {saved.get(k)}' for k in differing)}; this run has "
                              f"{', '.join(f'{k} {settings[k]}' for k in differing)}")
    if not isinstance(step, int) or not 1 <= step <= settings["steps"]:
        raise CheckpointError(f"--resume: {path.name} is at step {step}, past this run's {settings['steps']} "
                              f"steps (give --steps {step} or more)")
    return header, arrays


def train(name: str, steps: int, dtype: str, data: str | os.PathLike | None, seed: int,
          ckpt: str | os.PathLike | None = None, resume: bool = False, show: bool = True,
          options: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """Run `steps` steps on both sides; returns ({key: array} torch, paddle, seconds per step per side).
    resume: continue from ckpt (module docstring: what must match); the checkpoint is checked before
    anything is built, so a refused one costs nothing. options: the spec's (run_options), as resolved."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")      # no steps: a report that compared nothing
    if resume and not ckpt:
        raise ValueError("resume needs a checkpoint path")
    spec = get_spec(name)
    options = run_options(spec.train, steps, options) if spec.train else {}
    settings = run_settings(name, dtype, data, seed, steps, options)
    saved = read_checkpoint(ckpt, settings) if resume else None
    batches, num_classes = first_batches(data, steps, dtype, seed, BATCH_SIZE)
    t_model, t_loss, p_model, p_loss = build_training_pair(spec, num_classes, seed, dtype)
    sides = [Side(t_model, t_loss, spec.train, options), Side(p_model, p_loss, spec.train, options)]
    logs = [OrderedDict(), OrderedDict()]
    start_step = 0
    if saved is not None:
        header, arrays = saved
        try:
            tree = header["tree"]
            logs = [OrderedDict(_unpack(tree["logs"], arrays, None)[s.fw.name]) for s in sides]
            for side in sides:
                side.load(_unpack(tree[side.fw.name], arrays, side.fw), header["seconds"][side.fw.name])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:   # Runtime: torch's loads
            reason = (str(e).strip().splitlines() or [""])[0]
            raise CheckpointError(f"--resume: {ckpt} does not fit this run ({type(e).__name__}: {reason})") from None
        start_step = header["step"]
    for i in progress(range(start_step, steps), f"train {name} {dtype}", steps - start_step):
        for side, log, batch in zip(sides, logs, batches[i]):
            for k, v in side.step(i, batch).items():
                log[f"step{i:03d}.{k}"] = np.asarray(v, dtype=np.float64).reshape(-1)
        if ckpt:
            save_checkpoint(ckpt, settings, i + 1, logs, sides)
    # seconds cover every step, those before the checkpoint included
    return logs[0], logs[1], {s.fw.name: s.seconds / steps for s in sides}


def run_train(name: str, steps: int = 10, dtype: str = "float64", data: str | os.PathLike | None = None,
              out: str | os.PathLike = "reports", seed: int = 0, resume: bool = False,
              keep_checkpoint: bool = False, checkpoint: bool = True, options: dict | None = None) -> dict:
    """train_diff's check: both dtypes' runs as needed, the verdict, the report and curves.png."""
    spec = get_spec(name)
    if spec.train is None:
        raise ValueError(f"model {name!r} has no training spec")
    options = run_options(spec.train, steps, options)
    out_dir = Path(out) / name / "train"
    ckpts = [out_dir / f"checkpoint_{dtype}.npz"]
    t, p, sec = train(name, steps, dtype, data, seed, ckpts[0] if checkpoint else None, resume, options=options)
    t64 = p64 = None
    if dtype == "float32":
        ckpts.append(out_dir / "checkpoint_float64.npz")
        t64, p64, _ = train(name, steps, "float64", data, seed, ckpts[1] if checkpoint else None, resume,
                            options=options)
    if not keep_checkpoint:
        for ckpt in ckpts:
            ckpt.unlink(missing_ok=True)
    return train_report(out_dir, f"train:{name}", dtype, t, p, t64, p64, steps, spec.train.recipe, sec,
                        {"model": name, "seed": seed, "notes": spec.train.notes, "options": options})


def train_report(out_dir: str | os.PathLike, check: str, dtype: str, t: dict, p: dict, t64: dict | None,
                 p64: dict | None, steps: int, recipe: Any, sec: dict, extra: dict) -> dict:
    """The verdict over every step (align.compare's train rules), the report and curves.png."""
    results = compare_runs(dtype, t, p, t64, p64, fp64_max_rel=FP64_TRAIN_MAX_REL)
    if dtype == "float32":
        judge_after_first_step(results)

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
                        fp64_max_rel=FP64_TRAIN_MAX_REL, explain=explain,
                        # written inside the report's folder, which replaces the old one whole
                        files={"curves.png": lambda path: plot_curves(path, t, p, steps, f"{check} ({dtype})",
                                                                      t64, p64)})


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
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")      # no steps: a report that compared nothing
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
