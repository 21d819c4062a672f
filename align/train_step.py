"""One training step's gradients of a zoo model, torch vs Paddle, matched by parameter name (backward_diff's
library).

    summary = run_backward("retina_r50_ghm", dtype="float32", out="reports")

Same seeded weights, same first batch of the mirrored COCO loaders, forward + loss + backward in train mode on
both sides (the zoo spec's TrainSpec). A model without one gets the gradient of a seeded projection of its
outputs instead (align.backward). Logs every loss term and the gradient of every trainable parameter (Paddle
names) in backward execution order, so the first divergence is the first gradient that differs as backward
computes them. float32: align.compare's rule, with torch's envelope over its two convolution backends and,
where float32 flipped decisions (ReLU masks, the anchor assignment), the float64 replay of each run's own
decisions (align.events.float32_verdicts).
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from align import frameworks
from align.backward import align_backward, judge_zero_gradients
from align.compare import compare_runs
from align.events import decisions_of, float32_verdicts
from align.forward import torch_kernel_variant
from align.report import write_report
from align.train_data import first_batches
from align.training import build_training_pair, objective, training_loss
from align.zoo import ModelSpec, build_models, get_spec


class StepRunner:
    """One training step of a spec, a side at a time. The pair and the first batch are built once per dtype;
    every pass clears the gradients and takes fresh losses (GHM's momentum state starts at zero), so each
    pass is the first step from the same weights."""

    def __init__(self, spec, data, seed):
        self.spec, self.data, self.seed, self.built = spec, data, seed, {}

    def _pair(self, dtype):
        if dtype not in self.built:
            batches, self.num_classes = first_batches(self.data, 1, dtype, self.seed)
            (t_batch, p_batch), = batches
            t_model, _, p_model, _ = build_training_pair(self.spec, self.num_classes, self.seed, dtype)
            for model in (t_model, p_model):
                frameworks.of(model).set_mode(model, train=True)
            self.built[dtype] = (t_model, t_batch, p_model, p_batch)
        return self.built[dtype]

    def side(self, index: int, dtype: str, replay: dict | None = None,
             variant: bool = False) -> tuple[dict[str, np.ndarray], dict]:
        """({key: array}, decisions) of one side's step (0 torch, 1 Paddle): the loss terms, then the
        gradients in backward execution order (the parameters from the last defined to the first)."""
        t_model, t_batch, p_model, p_batch = self._pair(dtype)
        model, batch = (t_model, t_batch) if index == 0 else (p_model, p_batch)
        fw = frameworks.of(model)
        fw.zero_grad(model)
        loss = training_loss(self.spec, self.num_classes, model, dtype)
        with decisions_of(model, loss, dtype, replay) as decisions, \
                (torch_kernel_variant() if variant else contextlib.nullcontext()):
            total, terms = objective(self.spec.train.step_losses(model, loss, batch))
            fw.backward(total)
        log = OrderedDict((f"loss.{k}", fw.to_numpy(v).reshape(1)) for k, v in {"total": total, **terms}.items())
        log.update((f"grad.{k}", v) for k, v in reversed(list(fw.grads(model).items())))
        return log, decisions

    def torch(self, dtype: str, replay: dict | None = None,
              variant: bool = False) -> tuple[dict[str, np.ndarray], dict]:
        return self.side(0, dtype, replay, variant)

    def paddle(self, dtype: str, replay: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
        return self.side(1, dtype, replay)


def run_projection(spec: ModelSpec, dtype: str = "float64", out: str | os.PathLike = "reports",
                   seed: int = 0) -> dict:
    """Backward of a zoo model without a TrainSpec, on its seeded inputs, with the projection objective."""
    torch_model, paddle_model = build_models(spec, None, seed)
    return align_backward(torch_model, paddle_model, spec.inputs(seed), dtype,
                          str(Path(out) / spec.name / "backward"), seed, check=f"backward:{spec.name}",
                          extra={"model": spec.name, "seed": seed, "objective": "seeded projection"},
                          zero_grads=spec.zero_gradients)


def run_backward(name: str, dtype: str = "float64", data: str | os.PathLike | None = None,
                 out: str | os.PathLike = "reports", seed: int = 0) -> dict:
    spec = get_spec(name)
    if spec.train is None:
        return run_projection(spec, dtype, out, seed)
    start = time.perf_counter()
    runner, flips = StepRunner(spec, data, seed), None
    if dtype == "float64":
        (t, _), (p, _) = runner.torch(dtype), runner.paddle(dtype)
        results = compare_runs(dtype, t, p)
        judge_zero_gradients(results, t, p, spec.zero_gradients)
    else:
        results, t, p, flips = float32_verdicts(runner.torch, runner.paddle)
    unmatched = {"torch_only": [k for k in t if k not in p], "paddle_only": [k for k in p if k not in t]}
    extra = {"model": name, "seed": seed, "unmatched": unmatched, "order": "backward execution order",
             "num_parameters_compared": sum(k.startswith("grad.") for k in results),
             "seconds": time.perf_counter() - start}
    if flips is not None:
        extra["decision_flips"] = flips
        extra["notes"] = ("float32 flipped discrete decisions against float64 (decision_flips: ReLU elements per "
                          "site, assigned anchors per image); every key is judged by the float32-events rule on the "
                          "float64 replay of each run's own decisions")
    return write_report(str(Path(out) / name / "backward"), f"backward:{name}", dtype,
                        {k: t[k] for k in results}, {k: p[k] for k in results}, results, order=list(results),
                        extra=extra, save_tensors="failing", plot=True)
