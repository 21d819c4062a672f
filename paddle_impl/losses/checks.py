"""Input validation shared by the Paddle losses; torch_ref/losses/checks.py raises the same messages.

Every check raises ValueError naming the offending argument. Value checks (finiteness, range) read one
or two numbers per argument back to the host (one sync per argument, never per element or bin) and make
one pass over it: a sum, or a min/max that proves finiteness and range at once.
"""
import math
import numbers

import paddle

REDUCTIONS = ("none", "mean", "sum")
# Why not float16 / bfloat16: the losses' definitions and tolerances are float32 / float64 ones, and the twins
# would differ (torch computes in them, Paddle's CPU kernels lack several); one message says so in both.
FLOAT_DTYPES = (paddle.float32, paddle.float64)


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


def in_range(value, low, high=math.inf, low_open=False, high_open=False):
    """True for a finite real number (not a bool) within the bounds; NaN fails every comparison."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return False
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def check_number(name, value, low, high=math.inf, low_open=False, high_open=False):
    """A finite real number within the bounds: e.g. low=0 gives "must be >= 0", (0, 1) with high_open
    "must be in [0, 1)"."""
    if in_range(value, low, high, low_open, high_open):
        return
    if high == math.inf:
        bounds = f"{'>' if low_open else '>='} {low:g}"
    else:
        bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")


def check_positive(name, value):
    check_number(name, value, 0, low_open=True)


def check_int(name, value, low):
    """A Python (or NumPy) integer >= low, not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_tensor(name, x):
    if not isinstance(x, paddle.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(x).__name__}")


def check_floating(name, x):
    """A float32 or float64 tensor (values unchecked)."""
    check_tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32 or float64, got {dtype_name(x)}")


def check_float(name, x, ndim=None, low=None, high=None, high_inclusive=True):
    """A finite floating-point tensor (with `ndim` dimensions when given; within [low, high] when given)."""
    check_floating(name, x)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {shape_of(x)}")
    check_values(name, x, low, high, high_inclusive)


def check_values(name, x, low=None, high=None, high_inclusive=True):
    """Every element finite and, when bounds are given, within them. Unbounded: a finite sum proves every
    element finite (NaN and Inf propagate; an overflowing sum of finite values falls back to the elementwise
    test). Bounded: min and max are NaN if any element is and infinite if any is, so the one min/max pass
    that checks the range proves finiteness too."""
    if x.size == 0:
        return
    if low is None and high is None:
        if not bool(paddle.isfinite(x.sum())) and not bool(paddle.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        return
    lo, hi = paddle.stack([x.min(), x.max()]).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf")
    if low is not None and not lo >= low:
        raise ValueError(f"{name} must be >= {low:g}")
    if high is not None and not ((hi <= high) if high_inclusive else (hi < high)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high:g}")


def check_like(name, x, ref_name, ref, same_shape=True, low=None, high=None, high_inclusive=True):
    """A finite float tensor with the dtype (and shape) of `ref`, within [low, high] when given."""
    check_floating(name, x)
    if x.dtype != ref.dtype:
        raise ValueError(f"{name} must have the dtype of {ref_name} ({dtype_name(ref)}), got {dtype_name(x)}")
    if same_shape and shape_of(x) != shape_of(ref):
        raise ValueError(f"{name} must have the shape of {ref_name} {shape_of(ref)}, got {shape_of(x)}")
    check_values(name, x, low, high, high_inclusive)


def check_shape(name, x, shape, text=None):
    """x has exactly `shape`; `text` describes it in the message when the bare tuple would not."""
    if shape_of(x) != tuple(shape):
        raise ValueError(f"{name} must have shape {text or tuple(shape)}, got {shape_of(x)}")


def check_weight(name, weight, ref_name, shape, ref):
    """An optional non-negative weight with ref's dtype that broadcasts to `shape`."""
    if weight is None:
        return
    check_like(name, weight, ref_name, ref, same_shape=False, low=0.0)
    if not broadcasts_to(shape_of(weight), tuple(shape)):
        raise ValueError(f"{name} of shape {shape_of(weight)} does not broadcast to {tuple(shape)}")


def check_integer(name, x, ndim=None):
    check_tensor(name, x)
    if x.dtype not in (paddle.int32, paddle.int64):
        raise ValueError(f"{name} must be an int32 or int64 tensor, got {dtype_name(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {shape_of(x)}")


def check_pair(pred, target, weight, reduction):
    """pred and target of one shape and dtype, an optional weight broadcasting to them, a valid reduction."""
    check_reduction(reduction)
    check_float("pred", pred)
    check_like("target", target, "pred", pred)
    check_weight("weight", weight, "pred", pred.shape, pred)
