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
import contextlib

import numpy as np


def _relu_modules(model):
    """(name, module) of every ReLU module, for either framework."""
    try:
        import torch
        if isinstance(model, torch.nn.Module):
            return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)], "torch"
    except ImportError:
        pass
    import paddle
    return [(n, m) for n, m in model.named_sublayers() if isinstance(m, paddle.nn.ReLU)], "paddle"


def _site_names(calls):
    """Per-call site names: 'name' for a module called once, 'name#k' for its k-th call otherwise."""
    counts = {}
    for name in calls:
        counts[name] = counts.get(name, 0) + 1
    seen, out = {}, []
    for name in calls:
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if counts[name] == 1 else f"{name}#{k}")
    return out


@contextlib.contextmanager
def record_relu_masks(model):
    """Yields a dict that, after the block, maps every ReLU call site to its mask (output > 0)."""
    modules, fw = _relu_modules(model)
    calls, handles, masks = [], [], {}

    def hook_for(name):
        def hook(module, inputs, output):
            calls.append((name, (output > 0).numpy() if fw == "paddle" else (output > 0).detach().numpy()))
        return hook
    for name, module in modules:
        hook = hook_for(name)
        handles.append(module.register_forward_hook(hook) if fw == "torch" else module.register_forward_post_hook(hook))
    try:
        yield masks
    finally:
        for h in handles:
            h.remove()
        masks.update(zip(_site_names([n for n, _ in calls]), [m for _, m in calls]))


@contextlib.contextmanager
def replay_relu_masks(model, masks):
    """Every ReLU call returns input * the recorded mask of its site (shapes must match)."""
    modules, fw = _relu_modules(model)
    names = [n for n, _ in modules]
    handles, calls = [], []
    order = {}

    def hook_for(name):
        def hook(module, inputs, output):
            calls.append(name)
            k = order.get(name, 0)
            order[name] = k + 1
            site = name if f"{name}#0" not in masks else f"{name}#{k}"
            mask = masks[site]
            x = inputs[0]
            if tuple(mask.shape) != tuple(x.shape):
                raise ValueError(f"ReLU site {site}: recorded mask {mask.shape} vs input {tuple(x.shape)}")
            if fw == "torch":
                import torch
                return x * torch.from_numpy(mask).to(x.dtype)
            import paddle
            return x * paddle.to_tensor(mask).astype(x.dtype)
        return hook
    for name, module in modules:
        hook = hook_for(name)
        handles.append(module.register_forward_hook(hook) if fw == "torch" else module.register_forward_post_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n in masks and n not in calls]
    if missing:
        raise ValueError(f"ReLU sites recorded but not called in the replay: {missing[:5]}")


def mask_flips(a, b):
    """{site: number of elements whose decision differs} over the sites both runs have, non-zero only."""
    out = {}
    for site, m in a.items():
        if site in b and np.shape(m) == np.shape(b[site]):
            n = int(np.count_nonzero(np.asarray(m) != np.asarray(b[site])))
            if n:
                out[site] = n
    return out


def _to_numpy(value):
    if isinstance(value, tuple):
        return type(value)(*[_to_numpy(v) for v in value]) if hasattr(value, "_fields") else \
            tuple(_to_numpy(v) for v in value)
    if value is None or isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy().copy() if hasattr(value, "detach") else value.numpy().copy()


def _like(array, fw, float_dtype):
    """A recorded array as a tensor of `fw`; floating values take the replaying run's dtype."""
    if array is None:
        return None
    if isinstance(array, tuple):
        items = [_like(a, fw, float_dtype) for a in array]
        return type(array)(*items) if hasattr(array, "_fields") else tuple(items)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(float_dtype)
    if fw == "torch":
        import torch
        return torch.from_numpy(np.ascontiguousarray(array))
    import paddle
    return paddle.to_tensor(np.ascontiguousarray(array))


@contextlib.contextmanager
def record_calls(obj, method):
    """Yields a list that, after the block, holds the NumPy copy of every result of obj.<method>()."""
    original, results = getattr(obj, method), []

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        results.append(_to_numpy(out))
        return out
    setattr(obj, method, recording)
    try:
        yield results
    finally:
        delattr(obj, method)


@contextlib.contextmanager
def replay_calls(obj, method, results, fw, float_dtype):
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


def call_flips(a, b, field=0):
    """{call index: elements whose `field` differs} between two recorded call lists, non-zero only."""
    out = {}
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x[field]), np.asarray(y[field])
        n = int(np.count_nonzero(x != y)) if x.shape == y.shape else int(max(x.size, y.size))
        if n:
            out[str(i)] = n
    return out
