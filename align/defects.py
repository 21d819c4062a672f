"""Planted float32-only precision defects, to prove that a float32 check catches what it must.

    with plant(paddle_model, "backbone.layer3.0.conv2", "tf32"):          # forward: the layer's input
        summary = align_forward(torch_model, paddle_model, inputs, "float32", out)
    assert summary["first_divergence"].startswith("backbone.layer3.0.conv2")

Kinds, each what a real lower-precision path does to float32 values:
- "tf32": the mantissa truncated to 10 bits (TF32 tensor-core inputs);
- "bf16": rounded to bfloat16 (8-bit mantissa, round to nearest even) and back;
- "fp16": rounded to float16 and back (a float16 path; its accumulation rounds at least this much).
where="forward" degrades the layer's input in its forward; where="backward" degrades the gradient that
flows into the layer's backward (TF32 in its backward GEMMs). Only float32 tensors are touched: float64
runs stay exact, so a check's float64 half passes and its float32 half must fail. The degraded value
enters through a straight-through sum (x + (degraded - x) detached), so the graph is unchanged.
Works on a torch module or a Paddle layer, by its dotted name.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import numpy as np

from align import frameworks

KINDS = ("tf32", "bf16", "fp16")


def degrade(array: np.ndarray, kind: str) -> np.ndarray:
    """The float32 array as the lower-precision path `kind` would see it (float32 out)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    if kind == "tf32":
        return (a.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    if kind == "bf16":
        bits = a.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000      # round to nearest even
        return rounded.astype(np.uint32).view(np.float32)
    if kind == "fp16":
        return a.astype(np.float16).astype(np.float32)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _submodule(model, name):
    modules = dict(frameworks.of(model).named_submodules(model))
    if name not in modules:
        raise ValueError(f"no submodule {name!r} in {type(model).__name__}")
    return modules[name]


def _degraded_like(x, kind, fw):
    """x + (degrade(x) - x) with the difference detached, for a float32 tensor; other tensors as they are."""
    if not fw.is_tensor(x) or fw.dtype_name(x) != "float32":
        return x
    d = fw.tensor(degrade(fw.to_numpy(x), kind))
    return x + (d - x).detach()


@contextlib.contextmanager
def plant(model: Any, name: str, kind: str, where: str = "forward") -> Iterator[None]:
    """Within the block, submodule `name` of `model` runs with a float32-only defect of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if where not in ("forward", "backward"):
        raise ValueError(f"where must be 'forward' or 'backward', got {where!r}")
    fw = frameworks.of(model)
    module = _submodule(model, name)
    if where == "forward":
        def pre_hook(mod, inputs):
            return tuple(_degraded_like(x, kind, fw) for x in inputs)
        handle = fw.register_pre_hook(module, pre_hook)
    else:
        def grad_hook(g):
            return _degraded_like(g, kind, fw)

        def post_hook(mod, inputs, output):
            if fw.requires_grad(output):
                fw.register_grad_hook(output, grad_hook)
            return output
        handle = fw.register_post_hook(module, post_hook)
    try:
        yield
    finally:
        handle.remove()


def planted_check(model: str, side: str, layer: str, kind: str, where: str, out_dir: str | os.PathLike,
                  input_shape: tuple | None, seed: int = 0) -> dict:
    """A float32 check of zoo `model` with a defect of `kind` planted in `layer` on `side` ('torch' or
    'paddle'): forward (align_forward) or backward (align_backward, the seeded projection objective).
    Returns the summary; a working check fails it with first_divergence at `layer`."""
    from align.backward import align_backward
    from align.forward import align_forward
    from align.zoo import build_models, get_spec
    spec = get_spec(model)
    torch_model, paddle_model = build_models(spec, None, seed)
    inputs = spec.inputs(seed, input_shape)
    target = torch_model if side == "torch" else paddle_model
    with plant(target, layer, kind, where):
        if where == "forward":
            return align_forward(torch_model, paddle_model, inputs, "float32", out_dir)
        return align_backward(torch_model, paddle_model, inputs, "float32", out_dir, seed)
