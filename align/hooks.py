"""Record the output of every named submodule of a torch module or a paddle layer during one forward.

Names are the frameworks' own dotted names (named_modules / named_sublayers), so the two sides are matched
by name, never by definition order. A submodule called more than once in a forward (a head shared across
FPN levels) gets one key per call: 'name#0', 'name#1', ... Tuple, list and dict outputs are flattened into
'name.0', 'name.key', ... Outputs are copied at hook time (by the store, or read by the sink there and then),
so later in-place ops cannot alter them. Where an adapter's NumPy view is a copy (Paddle's Tensor.numpy()), the
hooks read the tensor through DLPack instead, without a copy (zero_copy_view).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

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


def zero_copy_view(fw: Any) -> Callable[[Any], np.ndarray | None]:
    """fw.numpy_view, sharing the tensor's memory also where that view copies (fw.numpy_copies): through
    DLPack, falling back to fw.numpy_view for what DLPack cannot export. Read it before the tensor can change."""
    if not fw.numpy_copies:
        return fw.numpy_view

    def view(value):
        if fw.is_tensor(value):
            try:
                return np.from_dlpack(value)
            except (AttributeError, BufferError, RuntimeError, TypeError, ValueError):
                pass
        return fw.numpy_view(value)
    return view


class _Recorder:
    """Collects per-call outputs as they arrive into a store (align.store.TensorStore: in memory by default);
    `records()` is that store under the final keys. With a sink, each output goes to sink(key, array) at once
    instead, keyed as the reference run's calls (`counts`: {module: calls} of that run), so a run can be
    compared while it runs; `keys()` lists them. With a call_sink, each call goes to call_sink(name, call,
    [(subkey, array)]) as it ends, before any key is given (align.lockstep names them once the calls are
    counted); `calls` lists (name, call, subkey) in order. keep=False keeps nothing (a rerun for its side effects)."""

    def __init__(self, to_numpy, store=None, keep=True, sink=None, counts=None, call_sink=None):
        self.to_numpy, self.keep, self.sink, self.reference = to_numpy, keep, sink, counts or {}
        self.call_sink = call_sink
        self.store = store if store is not None else TensorStore()
        self.calls = []  # (module name, [(subkey, store key)]) in execution order, stored runs
        self.sunk: list[str] = []  # keys handed to the sink, sink runs
        self.counts: dict[str, int] = {}

    def hook_for(self, name: str) -> Callable:
        def hook(module, inputs, output):
            if not self.keep:
                return
            flat = []
            flatten_outputs("", output, self.to_numpy, flat)
            k = self.counts.get(name, 0)
            self.counts[name] = k + 1
            if self.call_sink is not None:
                self.sunk.extend((name, k, sub) for sub, _ in flat)
                self.call_sink(name, k, flat)
                return
            if self.sink is not None:
                base = call_key(name, k, max(self.reference.get(name, 1), k + 1))
                for sub, arr in flat:
                    self.sunk.append(f"{base}.{sub}" if sub else base)
                    self.sink(self.sunk[-1], arr)
                return
            for i, (_, arr) in enumerate(flat):
                self.store.put(f"{len(self.calls)}:{i}", arr)
            self.calls.append((name, [(sub, f"{len(self.calls)}:{i}") for i, (sub, _) in enumerate(flat)]))
        return hook

    def keys(self) -> list:
        """The keys handed to the sink, in order ((name, call, subkey) with a call_sink)."""
        return list(self.sunk)

    def records(self) -> TensorStore:
        names = {}
        for base, (_, flat) in zip(call_keys([name for name, _ in self.calls]), self.calls):
            for sub, stored in flat:
                names[stored] = f"{base}.{sub}" if sub else base
        return self.store.renamed(names)


def call_key(name: str, call: int, calls: int) -> str:
    """The key of call `call` of a module called `calls` times: 'name' when once, else 'name#k'."""
    return name if calls == 1 and call == 0 else f"{name}#{call}"


def call_keys(names: list[str]) -> list[str]:
    """One key per call, in call order (call_key)."""
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    seen, keys = {}, []
    for name in names:
        k = seen.get(name, 0)
        seen[name] = k + 1
        keys.append(call_key(name, k, counts[name]))
    return keys


@contextlib.contextmanager
def post_hooks(model: Any, hook_for: Callable[[str], Callable]) -> Iterator[None]:
    """Inside the block, hook_for(name) is a forward post-hook on every named submodule of either framework."""
    fw = frameworks.of(model)
    handles = [fw.register_post_hook(m, hook_for(n)) for n, m in fw.named_submodules(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def tensors_in(fw: Any, value: Any) -> list[tuple[str, Any]]:
    """(subkey, tensor) of every tensor inside an output (flatten_outputs' names), the tensors themselves."""
    flat = []
    flatten_outputs("", value, lambda t: t if fw.is_tensor(t) else None, flat)
    return flat


@contextlib.contextmanager
def record(model: Any, store: TensorStore | None = None, keep: bool = True, sink: Callable | None = None,
           counts: dict | None = None, call_sink: Callable | None = None) -> Iterator[_Recorder]:
    """`with record(model) as rec: model(x)`; then `rec.records()` (or rec.keys() with a sink or a call_sink).
    Either framework."""
    recorder = _Recorder(zero_copy_view(frameworks.of(model)), store, keep, sink, counts, call_sink)  # the store copies
    with post_hooks(model, recorder.hook_for):
        yield recorder
