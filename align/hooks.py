"""Record the output of every named submodule of a torch module or a paddle layer during one forward.

Names are the frameworks' own dotted names (named_modules / named_sublayers), so the two sides are matched
by name, never by definition order. A submodule called more than once in a forward (a head shared across
FPN levels) gets one key per call: 'name#0', 'name#1', ... Tuple, list and dict outputs are flattened into
'name.0', 'name.key', ... Outputs are copied at hook time (by the store, or read by the sink there and then),
so later in-place ops cannot alter them.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from align import frameworks
from align.store import TensorStore


def flatten_outputs(prefix: str, value: Any, to_numpy: Callable[[Any], np.ndarray | None],
                    out: list[tuple[str, np.ndarray]]) -> None:
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
    """Collects per-call outputs as they arrive into a store (align.store.TensorStore: in memory by default);
    `records()` is that store under the final keys. With a sink, each output goes to sink(key, array) at once
    instead, keyed as the reference run's calls (`counts`: {module: calls} of that run), so a run can be
    compared while it runs; `keys()` lists them. keep=False keeps nothing (a rerun for its side effects)."""

    def __init__(self, to_numpy, store=None, keep=True, sink=None, counts=None):
        self.to_numpy, self.keep, self.sink, self.reference = to_numpy, keep, sink, counts or {}
        self.store = store if store is not None else TensorStore()
        self.calls = []  # (module name, [(subkey, store key)]) in execution order
        self.counts: dict[str, int] = {}

    def hook_for(self, name: str) -> Callable:
        def hook(module, inputs, output):
            if not self.keep:
                return
            flat = []
            flatten_outputs("", output, self.to_numpy, flat)
            k = self.counts.get(name, 0)
            self.counts[name] = k + 1
            if self.sink is not None:
                base = f"{name}#{k}" if k or self.reference.get(name, 1) > 1 else name
                keys = [f"{base}.{sub}" if sub else base for sub, _ in flat]
                for key, (_, arr) in zip(keys, flat):
                    self.sink(key, arr)
                self.calls.append((name, list(zip(keys, keys))))
                return
            for i, (_, arr) in enumerate(flat):
                self.store.put(f"{len(self.calls)}:{i}", arr)
            self.calls.append((name, [(sub, f"{len(self.calls)}:{i}") for i, (sub, _) in enumerate(flat)]))
        return hook


    def keys(self) -> list[str]:
        return [key for _, flat in self.calls for _, key in flat]

    def records(self) -> TensorStore:
        names = {}
        for base, (_, flat) in zip(call_keys([name for name, _ in self.calls]), self.calls):
            for sub, stored in flat:
                names[stored] = f"{base}.{sub}" if sub else base
        return self.store.renamed(names)


def call_keys(names: list[str]) -> list[str]:
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


class record:
    """Context manager: `with record(model) as rec: model(x)`; then `rec.records()`. Either framework."""

    def __init__(self, model, store=None, keep=True, sink=None, counts=None):
        self.model, self.fw = model, frameworks.of(model)
        self.recorder = _Recorder(self.fw.numpy_view, store, keep, sink, counts)   # the store copies
        self.handles = []

    def __enter__(self):
        for name, module in self.fw.named_submodules(self.model):
            self.handles.append(self.fw.register_post_hook(module, self.recorder.hook_for(name)))
        return self.recorder

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


def match_records(torch_records: dict[str, np.ndarray],
                  paddle_records: dict[str, np.ndarray]) -> tuple[list[str], dict[str, list[str]]]:
    """Split into matched keys (torch execution order) and the names found on one side only."""
    matched = [k for k in torch_records if k in paddle_records]
    torch_only = [k for k in torch_records if k not in paddle_records]
    paddle_only = [k for k in paddle_records if k not in torch_records]
    return matched, {"torch_only": torch_only, "paddle_only": paddle_only}
