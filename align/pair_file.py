"""A user's own pair, from a Python file (`--pair FILE.py` of forward, backward and train).

The file defines
    build_pair(dtype) -> (torch_model, paddle_model, inputs)   # inputs: {name: ndarray}, passed as keywords
and optionally
    loss_torch(outputs), loss_paddle(outputs) -> scalar       # backward and train objective (default: a seeded
                                                              # projection of the outputs)
    batches(step) -> {name: ndarray}                          # train inputs per step (default: inputs)
The tool copies the torch model's weights into the Paddle model by name (strict: every missing, unexpected or
mis-shaped parameter or buffer is named; Linear weights transposed) and aligns. The file is your own code and
runs as such: load only files you wrote or reviewed.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


class PairFileError(ValueError):
    """A pair file that cannot be used; the message names the file and what is wrong."""


@dataclass
class Pair:
    name: str                          # the file's stem: the report folder
    torch_model: Any
    paddle_model: Any
    inputs: dict[str, np.ndarray]
    loss_torch: Callable | None = None
    loss_paddle: Callable | None = None
    batches: Callable[[int], dict] | None = None

    @property
    def objective_fns(self) -> tuple | None:
        return (self.loss_torch, self.loss_paddle) if self.loss_torch and self.loss_paddle else None


def load_module(path: str | os.PathLike):
    path = Path(path)
    if path.suffix != ".py" or not path.is_file():
        raise PairFileError(f"--pair: {path} is not a .py file")
    spec = importlib.util.spec_from_file_location(f"pair_file_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build_pair", None)):
        raise PairFileError(f"--pair: {path} defines no build_pair(dtype)")
    if callable(getattr(module, "loss_torch", None)) != callable(getattr(module, "loss_paddle", None)):
        raise PairFileError(f"--pair: {path} must define both loss_torch and loss_paddle, or neither")
    return module


def load_pair(path: str | os.PathLike, dtype: str) -> Pair:
    """build_pair(dtype) of the file, checked, with the torch weights copied into the Paddle model."""
    from align import frameworks
    from weights_convert.transfer import copy_torch_to_paddle
    module = load_module(path)
    built = module.build_pair(dtype)
    if not (isinstance(built, tuple) and len(built) == 3):
        raise PairFileError(f"--pair: {path}: build_pair must return (torch_model, paddle_model, inputs)")
    torch_model, paddle_model, inputs = built
    if not frameworks.TORCH.is_module(torch_model) or not frameworks.PADDLE.is_module(paddle_model):
        raise PairFileError(f"--pair: {path}: build_pair must return a torch.nn.Module and a paddle.nn.Layer, "
                            f"got {type(torch_model).__name__} and {type(paddle_model).__name__}")
    if not isinstance(inputs, dict) or not all(isinstance(v, np.ndarray) for v in inputs.values()):
        raise PairFileError(f"--pair: {path}: inputs must be a dict of NumPy arrays")
    copy_torch_to_paddle(torch_model, paddle_model)
    return Pair(Path(path).stem, torch_model, paddle_model, inputs, getattr(module, "loss_torch", None),
                getattr(module, "loss_paddle", None), getattr(module, "batches", None))
