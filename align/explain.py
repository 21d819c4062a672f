"""Explain a divergence, not just measure it: which modules are compared (their classes on both sides), where
the first divergence sits, whether that module itself differs or only inherits upstream error, and which
known framework difference it matches (align/known_differences.py).

Locality: the module at the first divergence runs alone on the torch side's recorded inputs (forward), or on
its recorded inputs and output gradients (backward: its parameter and input gradients are compared), on both
sides; if the two then still disagree by the check's own rule, the divergence is `local` to that module, else
`propagated` (it carries upstream error). A module's output gradient (outgrad.<module>) is made by the
backward of the module that consumed that output (the next to run after it, `gradient_from`): that module is
the one replayed.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from align import frameworks, known_differences
from align.compare import compare_runs
from align.hooks import flatten_outputs, post_hooks, tensors_in


def module_classes(model: Any) -> dict[str, str]:
    """{dotted module name: class name} of every submodule."""
    fw = frameworks.of(model)
    return {n: type(m).__name__ for n, m in fw.named_submodules(model)}


def module_of_key(key: str, names: set[str] | dict) -> tuple[str | None, int]:
    """(module name, call index) a report key belongs to: forward keys are 'name', 'name#k', 'name.0', ...;
    backward keys 'grad.<parameter name>' and 'outgrad.<module>...'. (None, 0) when no module owns it (outputs,
    losses)."""
    base = key.partition(".")[2] if key.startswith(("grad.", "outgrad.")) else key
    call = 0
    head, sep, tail = base.partition("#")
    if sep:
        digits = tail.split(".", 1)[0]
        base, call = head, int(digits) if digits.isdigit() else 0
    parts = base.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in names:
            return name, call
    return None, 0


@contextlib.contextmanager
def _capture(module: Any, grads: bool):
    """Records every call of a module: NumPy copies of its positional inputs, taken before it runs (an
    in-place module overwrites them), and, with grads, the gradient that reaches each of its output tensors
    ({output subkey: array}, as flatten_outputs names them)."""
    fw, calls = frameworks.of(module), []

    def pre_hook(mod, inputs):
        calls.append({"inputs": [fw.to_numpy(x) if fw.is_tensor(x) else x for x in inputs], "grad": {}})

    def post_hook(mod, inputs, output):
        entry = calls[-1]
        for sub, tensor in tensors_in(fw, output):
            if grads and fw.requires_grad(tensor):
                fw.register_grad_hook(tensor, _keeper(entry["grad"], sub, fw))
    handles = [fw.register_pre_hook(module, pre_hook), fw.register_post_hook(module, post_hook)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _keeper(grads: dict, sub: str, fw):
    def keep(grad):                      # returns None: the gradient flows on unchanged
        grads[sub] = fw.to_numpy(grad)
    return keep


def _alone(module: Any, calls: list[dict], dtype: str, backward: bool) -> dict[str, np.ndarray]:
    """One module run alone on recorded calls in dtype: its outputs per call (forward), or its parameter
    gradients summed over the calls and the gradient of each call's floating inputs (backward)."""
    fw = frameworks.of(module)
    fw.cast(module, dtype)

    def tensor(a, grad=False):
        if not isinstance(a, np.ndarray):
            return a
        return fw.tensor(a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a, requires_grad=grad)
    out = OrderedDict()
    if not backward:
        with fw.no_grad():
            for k, call in enumerate(calls):
                flat = []
                flatten_outputs(f"call{k}", module(*[tensor(a) for a in call["inputs"]]), fw.to_numpy, flat)
                out.update(flat)
        return out
    fw.zero_grad(module)
    for k, call in enumerate(calls):
        if not call["grad"]:
            continue
        xs = [tensor(a, grad=isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating))
              for a in call["inputs"]]
        terms = [fw.sum64(y * fw.tensor(call["grad"][sub].astype(dtype)))
                 for sub, y in tensors_in(fw, module(*xs)) if sub in call["grad"]]
        fw.backward(sum(terms[1:], terms[0]))
        out.update((f"ingrad.call{k}.{i}", fw.grad_of(x, np.shape(call["inputs"][i])))
                   for i, x in enumerate(xs) if fw.is_tensor(x) and fw.requires_grad(x))
    out.update((f"grad.{n}", g) for n, g in fw.grads(module).items())
    fw.zero_grad(module)
    return out


def replay_locality(torch_model: Any, paddle_model: Any, module: str, call: int | None, dtype: str,
                    run_torch: Callable[[], Any], backward: bool = False) -> dict:
    """Run `module` alone on both sides on the torch side's recorded inputs (and output gradients) of one call
    (forward) or of every call (backward); returns {"locality", "worst", "keys"}."""
    t_mod = dict(frameworks.of(torch_model).named_submodules(torch_model))[module]
    p_mod = dict(frameworks.of(paddle_model).named_submodules(paddle_model))[module]
    with _capture(t_mod, backward) as calls:
        run_torch()
    if not backward:
        calls = calls[call:call + 1] if call is not None else calls
    if not calls:
        return {"locality": "unknown", "reason": "the module was not called"}
    t, p = _alone(t_mod, calls, dtype, backward), _alone(p_mod, calls, dtype, backward)
    if dtype == "float64":
        results = compare_runs(dtype, t, p)
    else:
        t64, p64 = _alone(t_mod, calls, "float64", backward), _alone(p_mod, calls, "float64", backward)
        results = compare_runs(dtype, t, p, t64, p64)
        for mod in (t_mod, p_mod):
            frameworks.of(mod).cast(mod, dtype)
    if not results:
        return {"locality": "unknown", "reason": "nothing to compare when run alone"}
    worst = max(results, key=lambda k: results[k].get("ratio", 0.0))
    local = not all(r["passed"] for r in results.values())
    return {"locality": "local" if local else "propagated",
            "worst": {"key": worst, "ratio": results[worst].get("ratio"), "max_rel": results[worst].get("max_rel")}}


def forward_calls(model: Any, run: Callable[[], Any]) -> list[tuple[str, int]]:
    """(module, call) of every submodule call in the order the calls finish, during run()."""
    order, counts = [], {}

    def hook_for(name):
        def hook(module, inputs, output):
            order.append((name, counts.get(name, 0)))
            counts[name] = order[-1][1] + 1
        return hook
    with post_hooks(model, hook_for):
        run()
    return order


def consumer_of(order: list[tuple[str, int]], name: str, call: int) -> str | None:
    """The module that ran next after call `call` of `name` and is not one of its ancestors (which finish
    after it): the one that consumed its output, whose backward produced the gradient at that output."""
    if (name, call) not in order:
        return None
    for other, _ in order[order.index((name, call)) + 1:]:
        if not name.startswith(other + "."):
            return other
    return None


def diagnose(torch_model: Any, paddle_model: Any, level: str, dtype: str, results: dict, first: str | None,
             torch_log: dict, paddle_log: dict, run_torch: Callable[[], Any] | None = None,
             recipe: Any = None) -> dict:
    """summary["modules"] and summary["diagnosis"] for a check (see the module docstring)."""
    t_cls, p_cls = module_classes(torch_model), module_classes(paddle_model)
    owners = {module_of_key(k, t_cls)[0] for k in results} - {None}
    modules = {n: [t_cls[n], p_cls.get(n)] for n in t_cls if n in owners}
    # class names up to each framework's spelling (Conv2d vs Conv2D is the same layer; ReLU vs ReLU6 is not)
    mismatched = {n: c for n, c in modules.items() if c[1] is not None and c[0].lower() != c[1].lower()}
    diagnosis: dict = {"class_mismatches": mismatched}
    if first is None:
        return {"modules": modules, "diagnosis": diagnosis}
    name, call = module_of_key(first, t_cls)
    detail = {"key": first, "module": name, "torch_class": t_cls.get(name), "paddle_class": p_cls.get(name)}
    replayed = name
    try:
        if first.startswith("outgrad.") and name is not None and run_torch is not None:
            # a module's output gradient is made by the backward of whatever consumed that output
            replayed = consumer_of(forward_calls(torch_model, run_torch), name, call)
            detail["gradient_from"] = {"module": replayed, "torch_class": t_cls.get(replayed),
                                       "paddle_class": p_cls.get(replayed)}
        if replayed is not None and replayed in p_cls and run_torch is not None:
            detail.update(replay_locality(torch_model, paddle_model, replayed,
                                          None if level == "backward" else call, dtype, run_torch,
                                          backward=level == "backward"))
    except Exception as e:          # the explanation must never cost the verdict: say why it is missing
        detail.update(locality="unknown", reason=f"{type(e).__name__}: {e}")
    ctx = known_differences.Context(level, dtype, first, {**results[first], "locality": detail.get("locality")},
                                    torch_log.get(first), paddle_log.get(first), frozenset(t_cls.values()),
                                    frozenset(p_cls.values()), p_cls, recipe)
    detail["known_difference"] = known_differences.match(ctx)
    diagnosis["first_divergence"] = detail
    return {"modules": modules, "diagnosis": diagnosis}


def describe(diagnosis: dict) -> str:
    """One paragraph for diff.txt."""
    d = diagnosis.get("first_divergence")
    lines = []
    if diagnosis.get("class_mismatches"):
        lines.append("modules whose classes differ: " + ", ".join(
            f"{n} ({t} vs {p})" for n, (t, p) in diagnosis["class_mismatches"].items()))
    if d:
        came = d.get("gradient_from")
        lines.append(f"first divergence {d['key']} in module {d['module']} ({d['torch_class']} vs "
                     f"{d['paddle_class']})"
                     + (f", a gradient made by the backward of {came['module']} ({came['torch_class']} vs "
                        f"{came['paddle_class']})" if came else "")
                     + f": {d.get('locality', 'unknown')}"
                     + (f" (alone: worst {d['worst']['key']} at ratio {d['worst']['ratio']:.3g})"
                        if d.get("worst") else ""))
        k = d.get("known_difference")
        if k:
            lines.append(f"known difference {k['name']} at {k['where']}: {k['what']}; workaround: {k['workaround']}")
    return "\n".join(lines)
