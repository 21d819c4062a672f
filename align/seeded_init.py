"""Seeded initial weights drawn from NumPy, so both frameworks start from the same numbers.

Every tensor gets its own generator seeded by (seed, crc32 of its name): the draw depends on the name
alone, never on definition order. Initialisation is done on the torch model; the Paddle twin receives the
same numbers through weights_convert.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def seeded_array(seed: int, name: str, shape: tuple, kind: str) -> np.ndarray:
    """kind: 'weight' (normal, variance 1/fan-in: activations stay O(1) through deep nets), 'bias',
    'bn_weight', 'bn_bias', 'running_mean', 'running_var'."""
    rng = tensor_rng(seed, name)
    if kind == "weight":
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        return rng.normal(0.0, np.sqrt(1.0 / fan_in), size=shape)
    if kind in ("bias", "bn_bias", "running_mean"):
        return rng.normal(0.0, 0.1, size=shape)
    if kind in ("bn_weight", "running_var"):
        return rng.uniform(0.5, 1.5, size=shape)
    raise ValueError(f"unknown kind {kind!r}")


def seeded_init_torch(model: Any, seed: int = 0) -> Any:
    """Overwrite every conv/linear/batch-norm tensor of a torch model in place; returns the model."""
    import torch
    from torch import nn

    kinds = {}
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            kinds.update({prefix + "weight": "bn_weight", prefix + "bias": "bn_bias",
                          prefix + "running_mean": "running_mean", prefix + "running_var": "running_var"})
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            kinds[prefix + "weight"] = "weight"
            if m.bias is not None:
                kinds[prefix + "bias"] = "bias"
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, kind in kinds.items():
            t = state[name]
            t.copy_(torch.from_numpy(seeded_array(seed, name, tuple(t.shape), kind)).to(t.dtype))
    return model
