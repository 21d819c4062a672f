"""Record the output of every named submodule of a torch module or a paddle layer during one forward.

Names are the frameworks' own dotted names (named_modules / named_sublayers), so the two sides are matched
by name, never by definition order. A submodule called more than once in a forward (a head shared across
FPN levels) gets one key per call: 'name#0', 'name#1', ... Tuple, list and dict outputs are flattened into
'name.0', 'name.key', ... Outputs are copied to NumPy at hook time, so later in-place ops cannot alter them.
"""
from collections import OrderedDict


def flatten_outputs(prefix, value, to_numpy, out):
    """Append (key, ndarray) pairs for every tensor inside `value` to the list `out`."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            flatten_outputs(f"{prefix}.{i}" if prefix else str(i), v, to_numpy, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            flatten_outputs(f"{prefix}.{k}" if prefix else str(k), v, to_numpy, out)
    else:
        arr = to_numpy(value)
        if arr is not None:
            out.append((prefix, arr))


class _Recorder:
    """Collects per-call outputs; `records()` turns them into an ordered {key: ndarray}."""

    def __init__(self, to_numpy):
        self.to_numpy = to_numpy
        self.calls = []  # (module name, [(subkey, array)]) in execution order

    def hook_for(self, name):
        def hook(module, inputs, output):
            flat = []
            flatten_outputs("", output, self.to_numpy, flat)
            self.calls.append((name, flat))
        return hook

    def records(self):
        out = OrderedDict()
        for base, (_, flat) in zip(call_keys([name for name, _ in self.calls]), self.calls):
            for sub, arr in flat:
                out[f"{base}.{sub}" if sub else base] = arr
        return out


def call_keys(names):
    """One key per call, in call order: 'name' for a module called once, 'name#k' for its k-th call."""
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    seen, keys = {}, []
    for name in names:
        k = seen.get(name, 0)
        seen[name] = k + 1
        keys.append(name if counts[name] == 1 else f"{name}#{k}")
    return keys


def framework_of(model):
    """'torch' for a torch module, else 'paddle'."""
    import torch
    return "torch" if isinstance(model, torch.nn.Module) else "paddle"


def named_submodules(model):
    """(dotted name, submodule) of every submodule, the model itself excluded, for either framework."""
    if framework_of(model) == "torch":
        return [(n, m) for n, m in model.named_modules() if n]
    return list(model.named_sublayers())


def register_post_hook(module, hook):
    """hook(module, inputs, output) after the module's forward (a returned value replaces the output);
    returns the handle to remove."""
    if framework_of(module) == "torch":
        return module.register_forward_hook(hook)
    return module.register_forward_post_hook(hook)


def to_numpy(value):
    """torch_to_numpy or paddle_to_numpy, whichever framework the tensor is from."""
    arr = torch_to_numpy(value)
    return arr if arr is not None else paddle_to_numpy(value)


def torch_to_numpy(value):
    """A detached NumPy copy of a tensor; arrays pass through; anything else -> None (not recorded)."""
    import numpy as np
    import torch
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    return value if isinstance(value, np.ndarray) else None


def paddle_to_numpy(value):
    """The Paddle twin of torch_to_numpy."""
    import numpy as np
    import paddle
    if isinstance(value, paddle.Tensor):
        return value.detach().cpu().numpy().copy()
    return value if isinstance(value, np.ndarray) else None


class record_torch:
    """Context manager: `with record_torch(model) as rec: model(x)`; then `rec.records()`."""

    def __init__(self, model):
        self.model = model
        self.recorder = _Recorder(torch_to_numpy)
        self.handles = []

    def __enter__(self):
        for name, module in self.model.named_modules():
            if name:
                self.handles.append(module.register_forward_hook(self.recorder.hook_for(name)))
        return self.recorder

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


class record_paddle:
    """Context manager: `with record_paddle(layer) as rec: layer(x)`; then `rec.records()`."""

    def __init__(self, layer):
        self.layer = layer
        self.recorder = _Recorder(paddle_to_numpy)
        self.handles = []

    def __enter__(self):
        for name, sub in self.layer.named_sublayers():
            self.handles.append(sub.register_forward_post_hook(self.recorder.hook_for(name)))
        return self.recorder

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


def match_records(torch_records, paddle_records):
    """Split into matched keys (torch execution order) and the names found on one side only."""
    matched = [k for k in torch_records if k in paddle_records]
    torch_only = [k for k in torch_records if k not in paddle_records]
    paddle_only = [k for k in paddle_records if k not in torch_records]
    return matched, {"torch_only": torch_only, "paddle_only": paddle_only}
