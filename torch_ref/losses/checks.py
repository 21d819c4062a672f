"""Input validation shared by the torch losses; paddle_impl/losses/checks.py raises the same messages.

Every check raises ValueError naming the offending argument. Finiteness and range checks read one
boolean per argument back to the host (one sync per argument, never per element or bin).
"""
import torch

REDUCTIONS = ("none", "mean", "sum")


def dtype_name(x):
    return str(x.dtype).split(".")[-1]


def shape_of(x):
    return tuple(int(s) for s in x.shape)


def broadcasts_to(shape, target):
    """True when a tensor of `shape` broadcasts to exactly `target` (no new leading dimensions)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_positive(name, value):
    if not float(value) > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(x).__name__}")


def check_float(name, x, ndim=None):
    """A finite floating-point tensor (with `ndim` dimensions when given)."""
    check_tensor(name, x)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {dtype_name(x)}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {shape_of(x)}")
    # fast path: a finite sum proves every element finite (NaN and Inf propagate); an overflowing sum of
    # finite values falls back to the elementwise test
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def check_like(name, x, ref_name, ref, same_shape=True):
    """A finite float tensor with the dtype (and shape) of `ref`."""
    check_float(name, x)
    if x.dtype != ref.dtype:
        raise ValueError(f"{name} must have the dtype of {ref_name} ({dtype_name(ref)}), got {dtype_name(x)}")
    if same_shape and shape_of(x) != shape_of(ref):
        raise ValueError(f"{name} must have the shape of {ref_name} {shape_of(ref)}, got {shape_of(x)}")


def check_weight(name, weight, ref_name, shape, ref):
    """An optional non-negative weight with ref's dtype that broadcasts to `shape`."""
    if weight is None:
        return
    check_like(name, weight, ref_name, ref, same_shape=False)
    if not broadcasts_to(shape_of(weight), tuple(shape)):
        raise ValueError(f"{name} of shape {shape_of(weight)} does not broadcast to {tuple(shape)}")
    check_range(name, weight, low=0.0)


def check_integer(name, x, ndim=None):
    check_tensor(name, x)
    if x.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be an int32 or int64 tensor, got {dtype_name(x)}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {shape_of(x)}")


def check_range(name, x, low=None, high=None, high_inclusive=True):
    """low <= x (<= or <) high, elementwise (one min/max reduction each); the message names the bounds."""
    if x.numel() == 0:
        return
    if low is not None and not bool(x.min() >= low):
        raise ValueError(f"{name} must be >= {low:g}")
    if high is not None:
        top = x.max()
        if not bool((top <= high) if high_inclusive else (top < high)):
            raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high:g}")


def check_pair(pred, target, weight, reduction):
    """pred and target of one shape and dtype, an optional weight broadcasting to them, a valid reduction."""
    check_reduction(reduction)
    check_float("pred", pred)
    check_like("target", target, "pred", pred)
    check_weight("weight", weight, "pred", pred.shape, pred)
