"""Backward alignment of any (torch module, paddle layer) pair: every parameter gradient and every module's
output gradient, matched by name.

    summary = align_backward(torch_model, paddle_model, {"x": array}, "float64", "reports/mymodel/backward")

Both models run in eval mode on the same inputs; the objective is a seeded random projection of the
outputs, sum(output * R) with R drawn from NumPy (identical on both sides), unless objective_fns are given.
Logged after the objective ("objective"), in backward execution order: the gradient reaching each module's
output as "outgrad.<module>" ('#k' per call, '.i' per output, as forward keys), in the order they arrive, each
module's parameter gradients "grad.<Paddle parameter name>" right after its last output gradient arrived,
and the parameters of modules whose outputs had no gradient hook at the end. In float32: torch's
envelope over its two convolution backends, and where float32 flipped a ReLU decision against float64, the
float64 replay of each run's masks (align/events.py, rule float32-events in align/compare.py).
The models are left in float32 afterwards if they came in float32.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np

from align import frameworks, plots
from align.compare import FP64_MAX_REL, check_dtype, compare_runs, reported, scale_of
from align.events import decisions_of, float32_verdicts
from align.explain import diagnose
from align.forward import _cast_inputs, call_model, torch_kernel_variant
from align.hooks import call_key, flatten_outputs, post_hooks, tensors_in
from align.report import write_report


def _projection(flat, seed):
    """One seeded array per output tensor, drawn in output order."""
    rng = np.random.default_rng([int(seed), 7919])
    return [rng.normal(size=np.shape(a)) for _, a in flat]


def projection_objective(model: Any, outputs: Any, dtype: str, seed: int) -> Any:
    """sum(output * R) over every output tensor, R seeded NumPy normals (identical on both sides), summed with a
    float64 accumulator: the objective is the harness's, and a float32 sum's own rounding (Paddle's is
    sequential, paddle_impl/losses/reduction.py) would dominate it."""
    fw = frameworks.of(model)
    tensors_out = []
    flatten_outputs("output", outputs, lambda t: t, tensors_out)
    proj = _projection([(k, fw.to_numpy(t)) for k, t in tensors_out], seed)
    return sum(fw.sum64(t * fw.tensor(r.astype(dtype))) for (_, t), r in zip(tensors_out, proj))


def _pass(model, inputs, dtype, seed, replay, variant=False, objective_fn=None, keyword=False):
    """The objective's backward on one model of either framework: ({'objective', 'grad.<name>'}, decisions);
    gradients in backward execution order (the parameters from the last defined to the first)."""
    fw = frameworks.of(model)
    fw.set_mode(fw.cast(model, dtype), train=False)
    fw.zero_grad(model)
    tensors = {k: fw.tensor(v) for k, v in _cast_inputs(inputs, dtype).items()}
    with decisions_of(model, replay=replay) as recorded, output_gradients(model) as (arrived, counts), \
            (torch_kernel_variant() if variant else contextlib.nullcontext()):
        out = call_model(model, tensors, keyword)
        objective = objective_fn(out) if objective_fn else projection_objective(model, out, dtype, seed)
        fw.backward(objective)
    log = OrderedDict(objective=fw.to_numpy(objective).reshape(1))
    log.update(backward_order(arrived, counts, fw.grads(model)))
    return log, recorded


@contextlib.contextmanager
def output_gradients(model: Any) -> Iterator[tuple[list, dict]]:
    """Records the gradient that reaches every submodule's output tensors in a backward: yields (arrived,
    counts), arrived filled with (module name, call, output subkey, array) in arrival order, counts with
    {module: calls}."""
    fw, arrived, counts = frameworks.of(model), [], {}

    def hook_for(name):
        def hook(module, inputs, output):
            call = counts.get(name, 0)
            counts[name] = call + 1
            for sub, tensor in tensors_in(fw, output):
                if fw.requires_grad(tensor):
                    fw.register_grad_hook(tensor, keeper(call, sub))

        def keeper(call, sub):
            def keep(grad):              # returns None: the gradient flows on unchanged
                arrived.append((name, call, sub, fw.to_numpy(grad)))
            return keep
        return hook
    with post_hooks(model, hook_for):
        yield arrived, counts


def backward_order(arrived: list, counts: dict, grads: dict[str, np.ndarray]) -> OrderedDict:
    """{"outgrad.<module>...": array, "grad.<parameter>": array} in backward execution order (module docstring)."""
    last = {name: i for i, (name, _, _, _) in enumerate(arrived)}
    owned: dict[str, list] = {}
    for key in reversed(list(grads)):
        owned.setdefault(key.rpartition(".")[0], []).append(key)
    log = OrderedDict()
    for i, (name, call, sub, grad) in enumerate(arrived):
        base = "outgrad." + call_key(name, call, counts.get(name, 1))
        log[f"{base}.{sub}" if sub else base] = grad
        if last[name] == i:
            log.update((f"grad.{k}", grads[k]) for k in owned.pop(name, []))
    for keys in owned.values():
        log.update((f"grad.{k}", grads[k]) for k in keys)
    return log


def check_analytically_zero(t_log: dict, p_log: dict, key: str, reason: str, max_rel: float = FP64_MAX_REL) -> dict:
    """A parameter gradient that is zero by construction (NonLocal2d's phi bias: the softmax cancels it), where
    both sides return rounding noise and a relative comparison of two noises means nothing: both must be zero
    to rounding, their largest value at most max_rel times the largest gradient of the module's other
    parameters (which are not zero). A real gradient there fails."""
    module = key[len("grad."):].rsplit(".", 1)[0]
    siblings = [scale_of(v) for k, v in t_log.items() if k.startswith(f"grad.{module}.") and k != key]
    scale = max(siblings, default=0.0)
    if scale <= 0:
        raise ValueError(f"{key}: declared analytically zero, but its module has no other non-zero gradient")
    worst = max(scale_of(t_log[key]), scale_of(p_log[key]))
    return {"max_abs": worst, "sibling_scale": scale, "max_rel": worst / scale, "compared": int(np.size(t_log[key])),
            "rule": "analytically-zero", "tolerance_rel": max_rel, "ratio": worst / scale / max_rel,
            "passed": bool(worst / scale <= max_rel), "reason": reason}


def judge_zero_gradients(results: dict, t_log: dict, p_log: dict, zero_grads: dict[str, str] | None) -> None:
    """Re-judge the float64 keys of the gradients a model declares zero by construction ({parameter: why})."""
    for name, reason in (zero_grads or {}).items():
        key = f"grad.{name}"
        if key not in results:
            raise ValueError(f"{key}: declared analytically zero, but not compared")
        results[key] = check_analytically_zero(t_log, p_log, key, reason)


def align_backward(torch_model: Any, paddle_model: Any, inputs: dict[str, np.ndarray], dtype: str,
                   out_dir: str | os.PathLike, seed: int = 0, check: str = "backward",
                   extra: dict | None = None, objective_fns: tuple[Callable, Callable] | None = None,
                   keyword: bool = False, save_tensors: str = "failing", zero_grads: dict | None = None) -> dict:
    """Run the objective's backward on both models, compare every parameter and output gradient, write the report.

    objective_fns: (torch loss(outputs), Paddle loss(outputs)) -> scalar, instead of the seeded projection;
    keyword: call the models with the inputs as keyword arguments (pair files); zero_grads: {parameter: why}
    of gradients zero by construction, judged in float64 by check_analytically_zero."""
    t_obj, p_obj = objective_fns or (None, None)
    check_dtype(dtype)
    plots.preload()                    # the report's plot, imported while the passes run
    flips = None
    if dtype == "float64":
        (t, _), (p, _) = (_pass(torch_model, inputs, dtype, seed, None, False, t_obj, keyword),
                          _pass(paddle_model, inputs, dtype, seed, None, False, p_obj, keyword))
        results = compare_runs(dtype, t, p)
        judge_zero_gradients(results, t, p, zero_grads)
    else:
        results, t, p, flips = float32_verdicts(
            lambda dt, replay, variant: _pass(torch_model, inputs, dt, seed, replay, variant, t_obj, keyword),
            lambda dt, replay: _pass(paddle_model, inputs, dt, seed, replay, False, p_obj, keyword))
        # the objective's float32 value is shown, not judged: it projects every output onto one number, so its
        # noise sums every output's rounding (measured on resnet50 at 1x3x64x80: Paddle 9.4e-5, torch 1.0e-5,
        # while every output element passes align_forward); the gradients are what this check judges
        results["objective"] = reported(t["objective"], p["objective"])
        for model in (torch_model, paddle_model):
            frameworks.of(model).cast(model, "float32")
    unmatched = {"torch_only": [k for k in t if k not in p], "paddle_only": [k for k in p if k not in t]}
    summary_extra = {"unmatched": unmatched, "order": "backward execution order", "objective_seed": seed,
                     "num_parameters_compared": sum(k.startswith("grad.") for k in results),
                     "num_output_gradients_compared": sum(k.startswith("outgrad.") for k in results),
                     "inputs": {k: list(np.shape(v)) for k, v in inputs.items()}}
    if flips is not None:
        summary_extra["decision_flips"] = flips
    summary_extra.update(extra or {})

    def explain(first):
        return diagnose(torch_model, paddle_model, "backward", dtype, results, first, t, p,
                        run_torch=lambda: _pass(torch_model, inputs, dtype, seed, None, False, t_obj, keyword))
    return write_report(out_dir, check, dtype, {k: t[k] for k in results}, {k: p[k] for k in results}, results,
                        order=list(results), extra=summary_extra, explain=explain, save_tensors=save_tensors,
                        plot=True)
