"""Discrete decisions that float32 rounding can flip, recorded in one run and replayed in another.

A ReLU whose input is within rounding of 0 keeps an element in float32 and drops it in float64 (or the
reverse). Its forward output barely moves, but its gradient passes in one run and not in the other, so the
two backward passes are different functions, not one function rounded twice. To judge such a run
(align.compare.check_float32_events) the float64 pass is replayed on the float32 run's own masks:
relu(x) is replaced by x * mask, the continuous float64 evaluation of the float32 decision.

    with record_relu_masks(model) as masks:      # {site: bool array}, site = "name" or "name#call"
        loss(model(x)).backward()
    with replay_relu_masks(model, masks):
        loss(model(x64)).backward()              # float64, on float32's decisions

Sites are ReLU modules (torch nn.ReLU, Paddle nn.ReLU) by name, one per call (a ReLU written as a
function call is not a site), and methods whose results are decisions, such as a loss's target
assignment (record_calls / replay_calls: in float32 an anchor's IoU can land on the other side of a
threshold; measured: 21 of 3852 anchors of the first synthetic training image). GHM's bins
(align/loss_runner.py) and NMS / top-k selections (align/detections.py) are the other decisions the tools
replay the same way.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np

from align import frameworks
from align.compare import FP64_MAX_REL, check_float32_events, compare_runs
from align.hooks import call_keys


def _relu_modules(model):
    """(name, module) of every ReLU module, for either framework."""
    fw = frameworks.of(model)
    return [(n, m) for n, m in fw.named_submodules(model) if isinstance(m, fw.relu_type)]


@contextlib.contextmanager
def record_relu_masks(model: Any) -> Iterator[dict[str, np.ndarray]]:
    """Yields a dict that, after the block, maps every ReLU call site to its mask (output > 0)."""
    calls, masks = [], {}

    def hook_for(name):
        def hook(module, inputs, output):
            calls.append((name, fw.to_numpy(output > 0)))
        return hook
    fw = frameworks.of(model)
    handles = [fw.register_post_hook(module, hook_for(name)) for name, module in _relu_modules(model)]
    try:
        yield masks
    finally:
        for h in handles:
            h.remove()
        masks.update(zip(call_keys([n for n, _ in calls]), [m for _, m in calls]))


@contextlib.contextmanager
def replay_relu_masks(model: Any, masks: dict[str, np.ndarray]) -> Iterator[None]:
    """Every ReLU call returns input * the recorded mask of its site (shapes must match); every recorded
    site must be called."""
    fw = frameworks.of(model)
    calls, used = {}, set()

    def hook_for(name):
        def hook(module, inputs, output):
            k = calls.get(name, 0)
            calls[name] = k + 1
            site = f"{name}#{k}" if f"{name}#0" in masks else name
            used.add(site)
            mask, x = masks[site], inputs[0]
            if tuple(mask.shape) != tuple(x.shape):
                raise ValueError(f"ReLU site {site}: recorded mask {mask.shape} vs input {tuple(x.shape)}")
            return x * fw.like(mask, x)
        return hook
    handles = [fw.register_post_hook(module, hook_for(name)) for name, module in _relu_modules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(masks) - used)
    if missing:
        raise ValueError(f"ReLU sites recorded but not called in the replay: {missing[:5]}")


def mask_flips(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, int]:
    """{site: number of elements whose decision differs} over the sites both runs have, non-zero only."""
    out = {}
    for site, m in a.items():
        if site in b and np.shape(m) == np.shape(b[site]):
            n = int(np.count_nonzero(np.asarray(m) != np.asarray(b[site])))
            if n:
                out[site] = n
    return out


def _numpy_copy(value):
    """A recorded result (tensor, None or a (named) tuple of them) as NumPy copies."""
    if isinstance(value, tuple):
        items = [_numpy_copy(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return None if value is None else frameworks.to_numpy(value)


def _like(array, fw, float_dtype):
    """A recorded array as a tensor of `fw`; floating values take the replaying run's dtype."""
    if array is None:
        return None
    if isinstance(array, tuple):
        items = [_like(a, fw, float_dtype) for a in array]
        return type(array)(*items) if hasattr(array, "_fields") else tuple(items)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(float_dtype)
    return fw.tensor(array)


@contextlib.contextmanager
def record_calls(obj: Any, method: str) -> Iterator[list]:
    """Yields a list that, after the block, holds the NumPy copy of every result of obj.<method>()."""
    original, results = getattr(obj, method), []

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        results.append(_numpy_copy(out))
        return out
    setattr(obj, method, recording)
    try:
        yield results
    finally:
        delattr(obj, method)


@contextlib.contextmanager
def replay_calls(obj: Any, method: str, results: list, fw: frameworks.Framework,
                 float_dtype: str) -> Iterator[None]:
    """obj.<method>() returns the recorded results in order instead of computing them (it still runs, so
    its input checks hold); the count of calls must match."""
    original, it = getattr(obj, method), iter(results)

    def replaying(*args, **kwargs):
        original(*args, **kwargs)
        try:
            return _like(next(it), fw, float_dtype)
        except StopIteration:
            raise ValueError(f"{method}: called more often than in the recorded run") from None
    setattr(obj, method, replaying)
    try:
        yield
    finally:
        delattr(obj, method)


def call_flips(a: list, b: list, field: int = 0) -> dict[str, int]:
    """{call index: elements whose `field` differs} between two recorded call lists, non-zero only."""
    out = {}
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x[field]), np.asarray(y[field])
        n = int(np.count_nonzero(x != y)) if x.shape == y.shape else int(max(x.size, y.size))
        if n:
            out[str(i)] = n
    return out


@contextlib.contextmanager
def decisions_of(model: Any, loss: Any = None, dtype: str = "float64",
                 replay: dict | None = None) -> Iterator[dict]:
    """Records (replay None) or replays one side's discrete decisions in a step: its ReLU masks and its
    target assignment (assignment_site). Yields the dict the recording fills."""
    recorded, site = {}, assignment_site(loss)
    with contextlib.ExitStack() as stack:
        if replay is None:
            recorded["relu"] = stack.enter_context(record_relu_masks(model))
            if site is not None:
                recorded["assign"] = stack.enter_context(record_calls(site, "assign"))
        else:
            stack.enter_context(replay_relu_masks(model, replay["relu"]))
            if "assign" in replay:
                stack.enter_context(replay_calls(site, "assign", replay["assign"], frameworks.of(model), dtype))
        yield recorded


def assignment_site(loss: Any) -> Any:
    """The object whose assign() makes a loss's target assignment: the loss itself when it has one (PP-YOLOE's
    criterion, which picks ATSS or TAL), else its `assigner` (RetinaNet's per-image max-IoU); None if neither."""
    if callable(getattr(loss, "assign", None)):
        return loss
    return getattr(loss, "assigner", None)


def decision_flips(a: dict, b: dict) -> dict[str, dict]:
    """{"relu": {site: n}, "assign": {call: n}} of the decisions that differ between two runs, non-empty."""
    flips = {"relu": mask_flips(a["relu"], b["relu"])}
    if "assign" in a and "assign" in b:
        flips["assign"] = call_flips(a["assign"], b["assign"])
    return {k: v for k, v in flips.items() if v}


def float32_verdicts(torch_pass: Callable, paddle_pass: Callable, fp64_max_rel: float = FP64_MAX_REL
                     ) -> tuple[dict[str, dict], dict[str, np.ndarray], dict[str, np.ndarray], dict | None]:
    """Every float32 key of one check, judged against float64; where float32 flipped a decision against
    float64 in any run, against the float64 replay of each run's own decisions (float32-events).

    torch_pass(dtype, replay, variant) and paddle_pass(dtype, replay) run one side once and return
    ({key: array}, decisions): replay None records the decisions (decisions_of), else they are replayed;
    variant runs torch on its other convolution backend. Returns (results, torch float32 log, Paddle
    float32 log, flips or None when nothing flipped)."""
    t, t_dec = torch_pass("float32", None, False)
    p, p_dec = paddle_pass("float32", None)
    alt, alt_dec = torch_pass("float32", None, True)
    t64, t64_dec = torch_pass("float64", None, False)
    p64, p64_dec = paddle_pass("float64", None)
    flips = {"torch_vs_float64": decision_flips(t_dec, t64_dec), "paddle_vs_float64": decision_flips(p_dec, p64_dec),
             "torch_variant_vs_float64": decision_flips(alt_dec, t64_dec),
             "torch_vs_paddle": decision_flips(t_dec, p_dec)}
    if not any(flips[k] for k in ("torch_vs_float64", "paddle_vs_float64", "torch_variant_vs_float64")):
        return compare_runs("float32", t, p, t64, p64, fp64_max_rel, torch_variants=[(alt, t64)]), t, p, None
    ref_t, _ = torch_pass("float64", t_dec, False)
    ref_alt, _ = torch_pass("float64", alt_dec, False)
    ref_p, _ = paddle_pass("float64", p_dec)
    events = {f"{kind}_{who}": sum(flips[pair].get(kind, {}).values())
              for kind in ("relu", "assign")
              for who, pair in (("torch", "torch_vs_float64"), ("paddle", "paddle_vs_float64"),
                                ("torch_vs_paddle", "torch_vs_paddle"))}
    events = {k: v for k, v in events.items() if v}
    results = OrderedDict(
        (k, check_float32_events(t[k], p[k], ref_t[k], ref_p[k], t64[k], p64[k], events,
                                 fp64_max_rel=fp64_max_rel, torch_variants=[(alt[k], ref_alt[k])]))
        for k in t if k in p)
    return results, t, p, flips
