"""Training-side alignment: the RetinaNet training variants, identical batches, one optimisation step.

Both frameworks get the same seeded weights (torch init, converted), the same batches (mirrored COCO readers
driven by one seed) and the same optimiser recipe:
- SGD, momentum 0.9, weight decay 1e-4 except biases and normalisation parameters (the usual no-decay set).
  Paddle's momentum kernel takes mu and the L2 coefficient as float32 attributes, even for float64
  parameters (float32(0.9) = 0.89999997615814): both sides get the float32 values, or float64 runs part
  by ~2e-8 relative from the second step on (first seen in zero-initialised biases);
- learning rate 0.01 * 2 / 16: mmdetection's RetinaNet rate (0.01 for 16 images per step) scaled linearly to
  the 2 images per step here. At 0.01 with 2 images the GHM model is unstable (loss 3 -> 19 at step 5) and
  chaotic: torch against itself with weights scaled by 1 + 1e-13 parts by 1e-7 within 6 steps, so no port
  could be held to 1e-8 there; at the scaled rate that self-difference stays below 2e-10 over 10 steps;
- linear warm-up from warmup_ratio * base_lr, then step decay by 0.1 at the given steps
  (computed here once, in Python, and set on both optimisers);
- gradient clipping by global norm with torch's formula, coef = min(1, max_norm / (norm + 1e-6)), applied
  on both sides. Paddle's ClipGradByGlobalNorm uses max_norm / max(norm, max_norm), which differs by
  ~1e-6 / norm whenever clipping is active; using one formula keeps float64 runs within 1e-8.
"""
from dataclasses import dataclass

import numpy as np

from align.seeded_init import seeded_init_torch, seeded_retina_head_init_torch
from weights_convert.rules import torch_key_to_paddle
from weights_convert.transfer import copy_torch_to_paddle

TRAIN_MODELS = {
    "retina_r50": dict(loss_type="focal", model={}),
    "retina_r50_ghm": dict(loss_type="ghm", model={}),
    "retina_r50_aploss": dict(loss_type="aploss",
                              model={"anchor_cfg": {"scales_per_octave": 2, "center_offset": 0.5}}),
}


@dataclass
class Recipe:
    base_lr: float = 0.01 * 2 / 16                    # linear scaling to 2 images per step (docstring)
    momentum: float = float(np.float32(0.9))          # what Paddle's kernel uses (see the module docstring)
    weight_decay: float = float(np.float32(1e-4))
    warmup_steps: int = 3
    warmup_ratio: float = 0.1
    decay_steps: tuple = (7,)
    clip_norm: float = 35.0

    def lr(self, step):
        """Learning rate at 0-based step: linear warm-up, then x0.1 at each decay step."""
        if step < self.warmup_steps:
            k = step / self.warmup_steps
            return self.base_lr * (self.warmup_ratio + (1 - self.warmup_ratio) * k)
        return self.base_lr * 0.1 ** sum(step >= s for s in self.decay_steps)


def no_decay(name):
    return name.endswith(".bias") or ".bn" in name or "downsample.1" in name or name.startswith("bn")


def build_training_pair(name, num_classes, seed=0, dtype="float64"):
    """(torch model, torch loss, paddle model, paddle loss) with identical weights, in dtype."""
    import torch
    from paddle_impl.models.retinanet import RetinaNet as PRetina
    from torch_ref.models.retinanet import RetinaNet as TRetina
    if name not in TRAIN_MODELS:
        raise ValueError(f"unknown training model {name!r}; available: {', '.join(TRAIN_MODELS)}")
    cfg = TRAIN_MODELS[name]
    t_model = TRetina(num_classes=num_classes, **cfg["model"])
    p_model = PRetina(num_classes=num_classes, **cfg["model"])
    seeded_init_torch(t_model, seed)
    seeded_retina_head_init_torch(t_model, seed)
    copy_torch_to_paddle(t_model, p_model)
    t_model.to(getattr(torch, dtype))
    p_model.to(dtype=dtype)
    t_loss, p_loss = training_losses(name, num_classes, t_model, p_model, dtype)
    return t_model, t_loss, p_model, p_loss


def training_losses(name, num_classes, t_model, p_model, dtype):
    """Fresh (torch loss, paddle loss) of a training variant, in dtype (GHM's momentum state at zero)."""
    import torch
    from paddle_impl.models.retina_loss import RetinaLoss as PLoss
    from torch_ref.models.retina_loss import RetinaLoss as TLoss
    loss_type = TRAIN_MODELS[name]["loss_type"]
    t_loss = TLoss(num_classes, t_model.box_coder, loss_type)
    p_loss = PLoss(num_classes, p_model.box_coder, loss_type)
    t_loss.to(getattr(torch, dtype))
    p_loss.to(dtype=dtype)
    return t_loss, p_loss


def loss_state(loss_module, to_numpy):
    """GHM momentum state (acc_sum buffers) by name, part of what training compares."""
    return {f"{k}": to_numpy(v) for k, v in loss_module.state_dict().items()}


def step_losses(model, loss, batch):
    """Loss terms of one batch; the twins share their call signatures, so one function serves both."""
    cls, reg = model(batch["images"])
    anchors = model.anchors(batch["images"], cls)
    return loss(cls, reg, anchors, batch["boxes"], batch["labels"])


def torch_grads(model):
    return {torch_key_to_paddle(n): p.grad.detach().numpy().copy() for n, p in model.named_parameters()
            if p.requires_grad and p.grad is not None}


def paddle_grads(model):
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()
            if not p.stop_gradient and p.grad is not None}


def param_groups(named_params, recipe):
    """SGD groups: weight decay on everything but the no-decay set. Works for either framework's parameters."""
    return [{"params": [p for n, p in named_params if not no_decay(n)], "weight_decay": recipe.weight_decay},
            {"params": [p for n, p in named_params if no_decay(n)], "weight_decay": 0.0}]


def torch_optimizer(named_params, recipe):
    import torch
    return torch.optim.SGD(param_groups(named_params, recipe), lr=recipe.lr(0), momentum=recipe.momentum)


def paddle_optimizer(named_params, recipe):
    import paddle
    return paddle.optimizer.Momentum(learning_rate=recipe.lr(0), momentum=recipe.momentum,
                                     parameters=param_groups(named_params, recipe), use_nesterov=False)


def clip_grad_norm_paddle(params, max_norm):
    """torch.nn.utils.clip_grad_norm_'s formula on Paddle gradients (see the module docstring); returns the
    global norm before clipping."""
    import paddle
    grads = [p.grad for p in params if p.grad is not None]
    norm = paddle.sqrt(paddle.add_n([(g * g).sum() for g in grads]))
    coef = paddle.clip(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.set_value(g * coef)
    return norm


class TorchTrainer:
    def __init__(self, model, loss, recipe):
        import torch
        self.torch, self.model, self.loss, self.recipe = torch, model, loss, recipe
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params, self.opt = [p for _, p in self.named], torch_optimizer(self.named, recipe)

    def step(self, step, batch):
        torch = self.torch
        for g in self.opt.param_groups:
            g["lr"] = self.recipe.lr(step)
        self.model.train()
        self.opt.zero_grad()
        terms = step_losses(self.model, self.loss, batch)
        total = sum(terms.values())
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.recipe.clip_norm)
        self.opt.step()
        return {"loss": total.item(), **{k: v.item() for k, v in terms.items()},
                "lr": self.recipe.lr(step), "grad_norm": norm.item()}


class PaddleTrainer:
    def __init__(self, model, loss, recipe):
        self.model, self.loss, self.recipe = model, loss, recipe
        self.named = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
        self.params, self.opt = [p for _, p in self.named], paddle_optimizer(self.named, recipe)

    def step(self, step, batch):
        self.opt.set_lr(self.recipe.lr(step))
        self.model.train()
        self.opt.clear_grad()
        terms = step_losses(self.model, self.loss, batch)
        total = sum(terms.values())
        total.backward()
        norm = clip_grad_norm_paddle(self.params, self.recipe.clip_norm)
        self.opt.step()
        return {"loss": float(total), **{k: float(v) for k, v in terms.items()},
                "lr": self.recipe.lr(step), "grad_norm": float(norm)}


def param_stats(named_arrays):
    """Global parameter statistics logged every step, per array and combined (no concatenated copy of every
    parameter: that is ~300 MB per side per step in float64)."""
    arrays = [np.asarray(a, dtype=np.float64).ravel() for a in named_arrays.values()]
    size = sum(a.size for a in arrays)
    return {"param_norm": float(np.sqrt(sum(float(a @ a) for a in arrays))),
            "param_mean": sum(float(a.sum()) for a in arrays) / size,
            "param_absmax": max(float(np.abs(a).max()) for a in arrays if a.size)}
