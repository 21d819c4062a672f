"""Reading and writing torch and Paddle checkpoints as {name: ndarray}.

Torch files load with weights_only=True (no arbitrary code from a checkpoint). Paddle's .pdparams are
pickles: paddle.load them only from sources you trust. Writes are atomic.
"""
from __future__ import annotations

import os

import numpy as np

from twin_common.atomic import atomic_path

PADDLE_SUFFIXES = (".pdparams",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose keys/shapes do not fit the model."""


def framework_of(path: str | os.PathLike, must_exist: bool = True) -> str:
    """'torch' or 'paddle', from the suffix, else (existing files) from the content: torch files are zips."""
    lower = os.fspath(path).lower()
    if lower.endswith(PADDLE_SUFFIXES):
        return "paddle"
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    if must_exist and os.path.isfile(path):
        with open(path, "rb") as f:
            return "torch" if f.read(4) == b"PK\x03\x04" else "paddle"
    raise CheckpointError(f"cannot tell the framework of {path!r}: use a suffix in "
                          f"{PADDLE_SUFFIXES + TORCH_SUFFIXES}")


def _unwrap(obj, path):
    # Training scripts often save {'state_dict': ...} or {'model': ...}; accept one level of nesting.
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")


def load_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
    import torch
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a checkpoint, a pickle with code in it
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    state = _unwrap(obj, path)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad}")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def load_paddle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    import paddle
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = paddle.load(path)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable Paddle checkpoint ({type(e).__name__}: {e})") from None
    state = _unwrap(obj, path)
    out = {}
    for k, v in state.items():
        if isinstance(v, paddle.Tensor):
            out[k] = v.numpy()
        elif isinstance(v, np.ndarray):
            out[k] = v
        else:
            raise CheckpointError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """(framework, {name: ndarray})."""
    fw = framework_of(path)
    return fw, (load_torch(path) if fw == "torch" else load_paddle(path))


def save_torch(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    import torch
    with atomic_path(path) as tmp:
        torch.save({k: torch.from_numpy(np.asarray(v, order="C")) for k, v in state.items()}, tmp)


def save_paddle(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    import paddle
    with atomic_path(path) as tmp:
        paddle.save({k: paddle.to_tensor(np.asarray(v, order="C")) for k, v in state.items()}, tmp)


def save_checkpoint(state: dict[str, np.ndarray], path: str | os.PathLike, framework: str) -> None:
    (save_torch if framework == "torch" else save_paddle)(state, path)
