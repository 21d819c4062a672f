"""Reading and writing torch and Paddle checkpoints as {name: ndarray}, and checking the weights they hold.

No code from a checkpoint runs: torch files load with weights_only=True, Paddle's .pdparams (pickles) with
our restricted unpickler (safe_unpickle.py), never paddle.load. Writes are atomic. validate_state refuses
NaN/Inf values and integer/low-precision tensors where a float32/float64 model expects floats.
"""
from __future__ import annotations

import os

import numpy as np

from twin_common.atomic import atomic_path
from weights_convert.safe_unpickle import ForbiddenGlobal, load_state_pickle

PADDLE_SUFFIXES = (".pdparams",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
KNOWN_SUFFIXES = f"{', '.join(PADDLE_SUFFIXES)} (Paddle), {', '.join(TORCH_SUFFIXES)} (torch)"
INTEGER_BUFFER_SUFFIXES = ("num_batches_tracked",)   # integer buffers of float models (torch BatchNorm)
FULL_FLOATS = ("float32", "float64")
SHOWN_KEYS = 5                                       # keys an error names before '...'


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose keys/shapes/values do not fit the model."""


def framework_of(path: str | os.PathLike, must_exist: bool = True) -> str:
    """'torch' or 'paddle', from the suffix, else (existing files) from the content: torch files are zips,
    Paddle files are pickles (which load_paddle reads without running any code from them)."""
    lower = os.fspath(path).lower()
    if lower.endswith(PADDLE_SUFFIXES):
        return "paddle"
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    if must_exist and os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            return "torch"
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):   # pickle PROTO 2-5
            return "paddle"
        raise CheckpointError(f"cannot tell the framework of {path}: neither a zip (torch) nor a pickle "
                              f"(Paddle); known suffixes: {KNOWN_SUFFIXES}")
    raise CheckpointError(f"cannot tell the framework of {path}: use a known suffix: {KNOWN_SUFFIXES}")


def _unwrap(obj, path):
    # Training scripts often save {'state_dict': ...} or {'model': ...}; accept one level of nesting.
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")


def load_torch(path: str | os.PathLike, bfloat16_bits: bool = False) -> dict[str, np.ndarray]:
    """{name: ndarray}. NumPy has no bfloat16: with bfloat16_bits such tensors come as their uint16 bit
    patterns (as Paddle stores them; validate_state casts them), else they are refused, since a uint16
    array would load into a float model as integers."""
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
    bf16 = [k for k, v in state.items() if v.dtype == torch.bfloat16]
    if bf16 and not bfloat16_bits:
        raise CheckpointError(f"{path}: bfloat16 tensors ({_key_list(bf16)}); convert them to float32 first "
                              f"(python -m align convert --cast)")
    return {k: (v.detach().cpu().view(torch.int16).numpy().view(np.uint16) if k in bf16
                else v.detach().cpu().numpy()) for k, v in state.items()}


def load_paddle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: ndarray}, equal to what paddle.load(path, return_numpy=True) gives for a state dict, without
    unpickling anything but arrays (a global outside that set is refused before it is called)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = load_state_pickle(path)
    except ForbiddenGlobal as e:
        raise CheckpointError(f"{path}: refused: the pickle calls the forbidden global {e}, which no Paddle "
                              f"state dict holds (nothing of it was run)") from None
    except Exception as e:  # truncated, not a pickle, a pickle of something else
        raise CheckpointError(f"{path}: not a readable Paddle checkpoint ({type(e).__name__}: {e})") from None
    state = _unwrap(obj, path)
    out = {}
    for k, v in state.items():
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):   # Paddle >= 2.1: (name, ndarray)
            v = v[1]
        if not isinstance(v, np.ndarray) or v.dtype.kind not in "biufc":
            raise CheckpointError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k] = v
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """(framework, {name: ndarray}), bfloat16 as uint16 bits on both sides: pass it through validate_state."""
    fw = framework_of(path)
    return fw, (load_torch(path, bfloat16_bits=True) if fw == "torch" else load_paddle(path))


def _key_list(keys: list[str]) -> str:
    """'count: first few keys, ...' for an error message."""
    more = ", ..." if len(keys) > SHOWN_KEYS else ""
    return f"{len(keys)}: {', '.join(keys[:SHOWN_KEYS])}{more}"


def _float_target(key: str, expected_dtypes: dict | None) -> str | None:
    """The float dtype a tensor must have (float32/float64), or None where no float is expected: integer
    targets, keys the model lacks (check_keys reports those), and without a model the integer buffers."""
    if expected_dtypes is None:
        return None if key.rpartition(".")[2] in INTEGER_BUFFER_SUFFIXES else "float32"
    target = expected_dtypes.get(key)
    return target if target in FULL_FLOATS else None


def _to_float(v: np.ndarray, dtype: str) -> np.ndarray:
    # uint16 is how bfloat16 is stored (Paddle, load_torch): its bits are the top half of a float32.
    if v.dtype == np.uint16:
        v = (v.astype(np.uint32) << 16).view(np.float32)
    return v.astype(dtype)


def validate_state(state: dict[str, np.ndarray], path: str | os.PathLike, expected_dtypes: dict | None = None,
                   allow_nonfinite: bool = False, cast: bool = False) -> dict[str, np.ndarray]:
    """Refuse, in one CheckpointError naming the keys, weights a model should not take silently:
    - integer, bool, float16 or bfloat16 (uint16) tensors where the model holds float32/float64
      (expected_dtypes: {key: dtype name} of the model; None: every key but the integer buffers is float);
      cast=True converts them to the model's dtype (float32 without a model) instead;
    - NaN/Inf values, unless allow_nonfinite.
    Returns the state (the cast tensors replaced)."""
    out, narrow, nonfinite = {}, [], []
    for k, v in state.items():
        target = _float_target(k, expected_dtypes)
        if target is not None and v.dtype.name not in FULL_FLOATS:
            if cast:
                v = _to_float(v, target)
            else:
                narrow.append(f"{k} ({'uint16/bfloat16' if v.dtype == np.uint16 else v.dtype} -> {target})")
        if not allow_nonfinite and v.dtype.kind in "fc" and not np.isfinite(v).all():
            nonfinite.append(k)
        out[k] = v
    problems = []
    if narrow:
        problems.append(f"integer or lower-precision tensors where the model holds float32/float64 "
                        f"({_key_list(narrow)}); --cast converts them")
    if nonfinite:
        problems.append(f"tensors with NaN/Inf values ({_key_list(nonfinite)}); --allow-nonfinite accepts them")
    if problems:
        raise CheckpointError(f"{path}: refused weights: " + "; ".join(problems))      # one line
    return out


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
