"""Forward alignment of any (torch module, paddle layer) pair, matched by submodule name.

    summary = align_forward(torch_model, paddle_model, {"x": array}, "float64", "reports/mymodel/forward")

Both models run in eval mode on the same inputs. Every named submodule's output is recorded on both sides
(align.hooks), plus what `outputs_fn` returns (final outputs, post-processing). In float32 the pair is also
run in float64 (same weights, cast) to measure each framework's own rounding noise, and torch once more
in float32 with its other convolution backend (torch_kernel_variant) for the envelope of its legitimate
float32 error (align.compare). The models are left in float32 afterwards if they came in float32.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from align import frameworks
from align.compare import (
    check_dtype,
    check_float64_or_exact,
    compare_runs,
    diff_stats,
    float32_verdict,
    max_abs_diff,
    scale_of,
)
from align.explain import diagnose
from align.hooks import flatten_outputs, record
from align.report import SAVE_TENSORS, write_report
from align.store import Subset, TensorStore


def _cast_inputs(inputs, dtype):
    return {k: (v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v) for k, v in inputs.items()}


@contextlib.contextmanager
def torch_kernel_variant() -> Iterator[None]:
    """torch's other legitimate CPU convolution backend: oneDNN off when it is on (the default), on when a
    user turned it off. Its float32 error is as legitimate as the default's (align/compare.py)."""
    import torch
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = not before
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def call_model(model: Any, tensors: dict, keyword: bool = False) -> Any:
    """model(**tensors) for pair files (inputs by keyword), else model(*tensors.values()) in dict order."""
    return model(**tensors) if keyword else model(*tensors.values())


@dataclass
class SideRun:
    """One forward of one model: `records` every stored output by key (module outputs, then the final outputs),
    `outputs` the final outputs alone, `keys` every key in execution order, `counts` {module: calls}."""
    records: TensorStore
    outputs: dict
    keys: list
    counts: dict
    seconds: float


def run_side(model: Any, inputs: dict[str, np.ndarray], dtype: str, outputs_fn: Callable | None = None,
             store: TensorStore | None = None, keep: bool = True, sink: Callable | None = None,
             counts: dict | None = None) -> SideRun:
    """One eval-mode forward of a model of either framework in `dtype`. Module outputs go to the store (with
    the final outputs after them), or with a sink to sink(key, array) as they arrive, keyed as the reference
    run whose `counts` are given (align.hooks); keep=False records nothing (a rerun for hooks of its own)."""
    fw = frameworks.of(model)
    fw.set_mode(fw.cast(model, dtype), train=False)
    tensors = {k: fw.tensor(v) for k, v in _cast_inputs(inputs, dtype).items()}
    start = time.perf_counter()
    with fw.no_grad(), record(model, store, keep, sink, counts) as rec:
        outputs = outputs_fn(model, tensors) if outputs_fn else call_model(model, tensors)
    seconds = time.perf_counter() - start
    flat = []
    flatten_outputs("output", outputs, fw.to_numpy, flat)
    records = rec.records()
    hook_keys = rec.keys() if sink is not None else list(records)
    if sink is None:
        for k, v in flat:
            records.put(k, v)
    return SideRun(records, dict(flat), hook_keys + [k for k, _ in flat], dict(rec.counts), seconds)


def align_forward(torch_model: Any, paddle_model: Any, inputs: dict[str, np.ndarray], dtype: str,
                  out_dir: str | os.PathLike, outputs_fn: Callable | None = None, check: str = "forward",
                  extra: dict | None = None, float64_view: Callable | None = None,
                  save_tensors: str = "failing") -> dict:
    """Run both models, compare every matched record, write the report to out_dir; returns the summary.

    inputs: {name: ndarray}, passed positionally in this order (or to the outputs_fn as tensors).
    outputs_fn(model, tensors) -> tensor / tuple / dict of tensors: the final outputs to compare (the same
    function serves both sides: align.frameworks.of(model) tells them apart where needed).
    float64_view(records32, records64) -> {key: array}: for outputs that select (NMS, top-k), the float64
    counterpart of the float32 selection, replacing the float64 run's own values in the noise floor.
    save_tensors: which full tensors the reprod_log files keep ('all', 'failing': the failing keys and the
    first divergence, 'none'); every other key keeps its statistics (align.report).

    Memory: the last run is compared as its outputs arrive and keeps no tensor it does not report; the runs
    it is compared against wait in align.store (in memory up to ALIGN_MEMORY_GB, then on disk under out_dir).
    """
    check_dtype(dtype)
    if save_tensors not in SAVE_TENSORS:
        raise ValueError(f"save_tensors must be one of {SAVE_TENSORS}, got {save_tensors!r}")
    stores = []

    def new_store():
        stores.append(TensorStore(out_dir))
        return stores[-1]
    try:
        pipeline = _float64 if dtype == "float64" else _float32
        t_log, p_log, results, t_keys, p_keys, timings = pipeline(torch_model, paddle_model, inputs, outputs_fn,
                                                                   float64_view, save_tensors, new_store)
        results = {k: results[k] for k in t_keys if k in results}          # torch's execution order
        p_set, t_set = set(p_keys), set(t_keys)
        unmatched = {"torch_only": [k for k in t_keys if k not in p_set],
                     "paddle_only": [k for k in p_keys if k not in t_set],
                     "missing_in_float64_run": [k for k in t_keys if k in p_set and k not in results]}
        if dtype == "float64":
            del unmatched["missing_in_float64_run"]
        summary_extra = {"unmatched": unmatched, "timings": timings,
                         "inputs": {k: list(np.shape(v)) for k, v in inputs.items()}}
        summary_extra.update(extra or {})

        def explain(first):
            return diagnose(torch_model, paddle_model, "forward", dtype, results, first, t_log, p_log,
                            run_torch=lambda: run_side(torch_model, inputs, dtype, outputs_fn, keep=False))
        return write_report(out_dir, check, dtype, Subset(t_log, results), Subset(p_log, results),
                            results, order=list(results), extra=summary_extra, explain=explain,
                            save_tensors=save_tensors, plot=True)
    finally:
        for store in stores:
            store.close()


def _float64(torch_model, paddle_model, inputs, outputs_fn, float64_view, save_tensors, new_store):
    """torch's run is stored; Paddle's is compared as it arrives (its log keeps what the report saves)."""
    t = run_side(torch_model, inputs, "float64", outputs_fn, new_store())
    p_log, results = new_store(), {}

    def compare(key, value):
        if key in t.records:
            results[key] = check_float64_or_exact(t.records[key], value)
        p_log.put(key, value, whole=save_tensors == "all" or (key in results and not results[key]["passed"]))
    p = run_side(paddle_model, inputs, "float64", outputs_fn, sink=compare, counts=t.counts)
    for key, value in p.outputs.items():
        compare(key, value)
    return t.records, p_log, results, t.keys, p.keys, {"torch_float64_s": t.seconds, "paddle_float64_s": p.seconds}


def _float32(torch_model, paddle_model, inputs, outputs_fn, float64_view, save_tensors, new_store):
    """Five runs, each module output measured against the runs before it as it arrives, so that only three are
    stored: torch float64 (S64), torch float32 (S32, torch's log), Paddle float32 (P32, Paddle's log; cross
    difference against S32), torch float32 on its other kernels (its noise, and its distance to P32), Paddle
    float64 (its noise against P32, the float64 agreement against S64: the verdict). The final outputs are
    compared at the end, where float64_view replaces each selection's float64 values (align.compare, float32
    rule) and judges the selections themselves (align.selections)."""
    s64 = run_side(torch_model, inputs, "float64", outputs_fn, new_store())
    ref, s32, p32, parts, results = s64.records, new_store(), new_store(), {}, {}

    def torch32(key, value):
        s32.put(key, value)
        if key in ref and np.issubdtype(value.dtype, np.floating):
            parts[key] = {"noise_torch": max_abs_diff(value, ref[key]), "noise_alt": [], "cross_alt": []}

    def variant(key, value):
        if key in parts:
            parts[key]["noise_alt"].append(max_abs_diff(value, ref[key]))
            if key in p32:
                parts[key]["cross_alt"].append(max_abs_diff(value, p32[key]))

    def paddle32(key, value):
        p32.put(key, value)
        if key in s32:
            reference = s32[key]
            if not np.issubdtype(reference.dtype, np.floating):
                results[key] = check_float64_or_exact(reference, value)       # integers: equality
            elif key in parts:
                parts[key]["cross"] = diff_stats(reference, value)

    def paddle64(key, value):
        part = parts.pop(key, None)
        if part is not None and "cross" in part:
            reference = ref[key]
            results[key] = float32_verdict(part["cross"], scale_of(reference), part["noise_torch"], part["noise_alt"],
                                           max_abs_diff(p32[key], value), diff_stats(reference, value)["max_rel"],
                                           cross_alt=part["cross_alt"])
    t = run_side(torch_model, inputs, "float32", outputs_fn, sink=torch32, counts=s64.counts)
    p = run_side(paddle_model, inputs, "float32", outputs_fn, sink=paddle32, counts=s64.counts)
    with torch_kernel_variant():       # after Paddle's run: its distance to Paddle's stored values is measured too
        alt = run_side(torch_model, inputs, "float32", outputs_fn, sink=variant, counts=s64.counts)
    p64 = run_side(paddle_model, inputs, "float64", outputs_fn, sink=paddle64, counts=s64.counts)
    for model in (torch_model, paddle_model):
        frameworks.of(model).cast(model, "float32")
    for side, run in ((s32, t), (p32, p)):
        for key, value in run.outputs.items():
            side.put(key, value)
    t64 = {k: ref[k] for k in s64.outputs}
    alt64, tv64, pv64 = t64, t64, p64.outputs
    if float64_view is not None:       # each selection's float64 counterpart, from its framework's run
        alt64 = ChainMap(float64_view(alt.outputs, t64), t64)
        tv64 = ChainMap(float64_view(t.outputs, t64), t64)
        pv64 = ChainMap(float64_view(p.outputs, p64.outputs), p64.outputs)
    both64 = [k for k in t.outputs if k in tv64 and k in pv64]
    results.update(compare_runs("float32", Subset(t.outputs, both64), p.outputs, tv64, pv64,
                                torch_variants=[(alt.outputs, alt64)]))
    judge = getattr(float64_view, "judge", None)
    if judge is not None:              # selections matched by what they selected (align.selections)
        results.update(judge(t.outputs, p.outputs, tv64, pv64, t64, p64.outputs, [(alt.outputs, alt64)]))
    timings = {"torch_float32_s": t.seconds, "paddle_float32_s": p.seconds, "torch_variant_float32_s": alt.seconds,
               "torch_float64_s": s64.seconds, "paddle_float64_s": p64.seconds}
    return s32, p32, results, t.keys, p.keys, timings
