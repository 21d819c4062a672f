"""Training-side alignment of any zoo model with a TrainSpec: identical batches, one optimisation step.

Both frameworks get the same seeded weights (torch init, converted), the same batches (mirrored COCO readers
driven by one seed) and the same optimiser recipe:
- SGD, momentum 0.9, weight decay 1e-4 except the spec's no-decay set (RetinaNet: biases and normalisation).
  Paddle's momentum kernel takes mu and the L2 coefficient as float32 attributes, even for float64
  parameters (float32(0.9) = 0.89999997615814): both sides get the float32 values, or float64 runs part
  by ~2e-8 relative from the second step on (first seen in zero-initialised biases);
- learning rate 0.01 * 2 / 16: mmdetection's RetinaNet rate (0.01 for 16 images per step) scaled linearly to
  the 2 images per step here. At 0.01 with 2 images the GHM model is unstable (loss 3 -> 19 at step 5) and
  chaotic: torch against itself with weights scaled by 1 + 1e-13 parts by 1e-7 within 6 steps, so no port
  could be held to 1e-8 there; at the scaled rate that self-difference stays below 2e-10 over 10 steps;
- linear warm-up from warmup_ratio * base_lr, then step decay by 0.1 at the given steps, or (schedule
  "cosine", PP-YOLOE) half a cosine from warm-up's end to cosine_steps (computed here once, in Python, and
  set on both optimisers);
- gradient clipping by global norm with torch's formula, coef = min(1, max_norm / (norm + 1e-6)), applied
  on both sides. Paddle's ClipGradByGlobalNorm uses max_norm / max(norm, max_norm), which differs by
  ~1e-6 / norm whenever clipping is active; using one formula keeps float64 runs within 1e-8. clip_norm
  None: no clipping (the norm is still logged);
- a spec's EMA (PP-YOLOE's ModelEMA), updated after every optimiser step; its bias-corrected weights are
  logged as ema_* statistics;
- a spec's before_step hook (PP-YOLOE: the static-assigner switch), whose values are logged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from align import frameworks
from weights_convert.transfer import copy_torch_to_paddle

if TYPE_CHECKING:
    from align.zoo import ModelSpec


@dataclass
class Recipe:
    base_lr: float = 0.01 * 2 / 16                    # linear scaling to 2 images per step (docstring)
    momentum: float = float(np.float32(0.9))          # what Paddle's kernel uses (see the module docstring)
    weight_decay: float = float(np.float32(1e-4))
    warmup_steps: int = 3
    warmup_ratio: float = 0.1
    decay_steps: tuple = (7,)
    clip_norm: float | None = 35.0
    schedule: str = "step"                            # "step" (decay_steps) or "cosine" (to cosine_steps)
    cosine_steps: int = 0

    def lr(self, step: int) -> float:
        """Learning rate at 0-based step: linear warm-up, then x0.1 at each decay step or the cosine."""
        if step < self.warmup_steps:
            k = step / self.warmup_steps
            return self.base_lr * (self.warmup_ratio + (1 - self.warmup_ratio) * k)
        if self.schedule == "cosine":
            span = self.cosine_steps - self.warmup_steps
            return self.base_lr * 0.5 * (math.cos(math.pi * (step - self.warmup_steps) / span) + 1)
        return self.base_lr * 0.1 ** sum(step >= s for s in self.decay_steps)


def _train_spec(spec):
    if spec.train is None:
        raise ValueError(f"model {spec.name!r} has no training spec")
    return spec.train


def build_training_pair(spec: ModelSpec, num_classes: int, seed: int = 0,
                        dtype: str = "float64") -> tuple[Any, Any, Any, Any]:
    """(torch model, torch loss, paddle model, paddle loss) of a zoo spec with identical weights, in dtype:
    the seeded init, then the family's head init, copied to Paddle."""
    from align.zoo import build_twins
    train = _train_spec(spec)
    t_model, p_model = build_twins(spec, num_classes=num_classes)
    spec.seeded_init(t_model, seed)
    if train.head_init is not None:
        train.head_init(t_model, seed)
    copy_torch_to_paddle(t_model, p_model, spec.key_rule)
    for model in (t_model, p_model):
        frameworks.of(model).cast(model, dtype)
    return t_model, training_loss(spec, num_classes, t_model, dtype), p_model, \
        training_loss(spec, num_classes, p_model, dtype)


def training_loss(spec: ModelSpec, num_classes: int, model: Any, dtype: str) -> Any:
    """A fresh loss module of a spec for one side's model, in dtype (GHM's momentum state at zero)."""
    fw = frameworks.of(model)
    loss = getattr(_train_spec(spec), f"build_{fw.name}_loss")(model, num_classes)
    return frameworks.of(loss).cast(loss, dtype)


def loss_state(loss_module: Any) -> dict[str, np.ndarray]:
    """The loss module's state (GHM momentum acc_sum buffers) by name, part of what training compares."""
    return frameworks.of(loss_module).numpy_state(loss_module)


def param_groups(named_params: list[tuple[str, Any]], recipe: Recipe,
                 no_decay: Callable[[str], bool]) -> list[dict]:
    """SGD groups: weight decay on everything but the no-decay set. Works for either framework's parameters."""
    return [{"params": [p for n, p in named_params if not no_decay(n)], "weight_decay": recipe.weight_decay},
            {"params": [p for n, p in named_params if no_decay(n)], "weight_decay": 0.0}]


class Trainer:
    """One framework's SGD steps on a model and its loss: the recipe's learning rate, torch's clipping
    formula on both sides (module docstring), and the values logged per step."""

    def __init__(self, model, loss, train, options: dict | None = None):
        self.fw, self.model, self.loss, self.train = frameworks.of(model), model, loss, train
        self.recipe, self.options = train.recipe, options or {}
        self.named = self.fw.named_trainable(model)
        self.params = [p for _, p in self.named]
        self.opt = self.fw.sgd(param_groups(self.named, self.recipe, train.no_decay), self.recipe.lr(0),
                               self.recipe.momentum)
        build_ema = getattr(train, f"build_{self.fw.name}_ema")
        self.ema = build_ema(model) if build_ema else None

    def step(self, step: int, batch: dict) -> dict[str, float]:
        fw = self.fw
        fw.set_lr(self.opt, self.recipe.lr(step))
        fw.set_mode(self.model, train=True)
        fw.zero_grad(self.model)
        hooked = self.train.before_step(self.loss, step, self.options) if self.train.before_step else {}
        total, terms = objective(self.train.step_losses(self.model, self.loss, batch))
        fw.backward(total)
        clip = self.recipe.clip_norm
        norm = fw.clip_grad_norm(self.params, math.inf if clip is None else clip)   # inf: scales by 1.0
        self.opt.step()
        values = {"loss": fw.item(total), **{k: fw.item(v) for k, v in terms.items()},
                  "lr": self.recipe.lr(step), "grad_norm": norm, **hooked}
        if self.ema is not None:
            self.ema.update(self.model)
            ema = {k: fw.to_numpy(v) for k, v in self.ema.apply().items()}
            values.update({f"ema_{k.partition('_')[2]}": v for k, v in param_stats(ema).items()})
        return values


def objective(terms: dict) -> tuple[Any, dict]:
    """(the scalar to back-propagate, the logged terms) of a step_losses dict: its "loss" entry when it has
    one (PP-YOLOE: weighted terms, L1 logged only), else the sum of its terms."""
    terms = dict(terms)
    total = terms.pop("loss", None)
    return (sum(terms.values()) if total is None else total), terms


def param_stats(named_arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Global parameter statistics logged every step, per array and combined (no concatenated copy of every
    parameter: that is ~300 MB per side per step in float64)."""
    arrays = [np.asarray(a, dtype=np.float64).ravel() for a in named_arrays.values()]
    size = sum(a.size for a in arrays)
    return {"param_norm": float(np.sqrt(sum(float(a @ a) for a in arrays))),
            "param_mean": sum(float(a.sum()) for a in arrays) / size,
            "param_absmax": max(float(np.abs(a).max()) for a in arrays if a.size)}
