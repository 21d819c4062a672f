"""Naming rules between torch state_dicts and Paddle state_dicts.

- BatchNorm: running_mean <-> _mean, running_var <-> _variance; num_batches_tracked exists only in torch
  (dropped going to Paddle; restored as 0 going back: it only matters for BatchNorm with momentum=None,
  which no model here uses).
- Linear: weight is [out, in] in torch and [in, out] in Paddle: transposed.
- Everything else (conv OIHW, biases, BN affine) keeps its name and layout.
"""
from __future__ import annotations

from typing import Any

TORCH_TO_PADDLE_SUFFIX = {"running_mean": "_mean", "running_var": "_variance"}
PADDLE_TO_TORCH_SUFFIX = {v: k for k, v in TORCH_TO_PADDLE_SUFFIX.items()}
TORCH_ONLY_SUFFIX = "num_batches_tracked"


def _swap_suffix(key, table):
    head, _, last = key.rpartition(".")
    if last in table:
        return f"{head}.{table[last]}" if head else table[last]
    return key


def torch_key_to_paddle(key: str) -> str | None:
    """The Paddle key for a torch key, or None for a torch-only buffer."""
    if key.rpartition(".")[2] == TORCH_ONLY_SUFFIX:
        return None
    return _swap_suffix(key, TORCH_TO_PADDLE_SUFFIX)


def paddle_key_to_torch(key: str) -> str:
    return _swap_suffix(key, PADDLE_TO_TORCH_SUFFIX)


def linear_weight_keys(torch_model: Any) -> frozenset[str]:
    """torch keys of Linear weights (those transposed between the frameworks)."""
    from torch import nn
    return frozenset(f"{name}.weight" if name else "weight" for name, m in torch_model.named_modules()
                     if isinstance(m, nn.Linear))
