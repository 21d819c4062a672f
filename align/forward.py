"""Forward alignment of any (torch module, paddle layer) pair, matched by submodule name.

    summary = align_forward(torch_model, paddle_model, {"x": array}, "float64", "reports/mymodel/forward")

Both models run in eval mode on the same inputs. Every named submodule's output is recorded on both sides
(align.hooks), plus what `outputs_fn` returns (final outputs, post-processing). In float32 the pair is also
run in float64 (same weights, cast) to measure each framework's own rounding noise, and torch once more
in float32 with its other convolution backend (torch_kernel_variant) for the envelope of its legitimate
float32 error (align.compare). The models are left in float32 afterwards if they came in float32.

The runs go in lockstep by default (align.lockstep): every run in a thread of its own, one at a time, each
module's outputs compared as soon as all runs have produced them, so no run waits whole in memory or on disk
(float32 runs its five passes on copies of the models: torch in float64 and with its other kernels, Paddle in
float64). ALIGN_LOCKSTEP=0 (or lockstep=False) runs them one after the other instead, holding the runs the
later ones are compared against (align.store); both give the same report. A pair whose keys cannot be matched
by module call (a module named like another's output subkey), or whose models cannot be copied, runs one
after the other.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from align import frameworks, plots
from align import lockstep as ls
from align.compare import (
    Summaries,
    check_dtype,
    check_float64_or_exact,
    compare_runs,
    diff_stats,
    float32_verdict,
    judge_float64,
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


def lockstep_default() -> bool:
    """Whether align_forward runs its passes in lockstep (ALIGN_LOCKSTEP, default 1)."""
    value = os.environ.get("ALIGN_LOCKSTEP", "1")
    if value not in ("0", "1"):
        raise ValueError(f"ALIGN_LOCKSTEP must be 0 or 1, got {value!r}")
    return value == "1"


def align_forward(torch_model: Any, paddle_model: Any, inputs: dict[str, np.ndarray], dtype: str,
                  out_dir: str | os.PathLike, outputs_fn: Callable | None = None, check: str = "forward",
                  extra: dict | None = None, float64_view: Callable | None = None,
                  save_tensors: str = "failing", lockstep: bool | None = None) -> dict:
    """Run both models, compare every matched record, write the report to out_dir; returns the summary.

    inputs: {name: ndarray}, passed positionally in this order (or to the outputs_fn as tensors).
    outputs_fn(model, tensors) -> tensor / tuple / dict of tensors: the final outputs to compare (the same
    function serves both sides: align.frameworks.of(model) tells them apart where needed).
    float64_view(records32, records64) -> {key: array}: for outputs that select (NMS, top-k), the float64
    counterpart of the float32 selection, replacing the float64 run's own values in the noise floor.
    save_tensors: which full tensors the reprod_log files keep ('all', 'failing': the failing keys and the
    first divergence, 'none'); every other key keeps its statistics (align.report).

    lockstep: run the passes in lockstep (module docstring; default lockstep_default()).

    Memory: in lockstep an output waits only for its counterparts, and nothing is kept that the report does
    not save; one after the other, the last run is compared as its outputs arrive and the runs it is compared
    against wait in align.store (in memory up to ALIGN_MEMORY_GB, then on disk under out_dir).
    """
    check_dtype(dtype)
    if save_tensors not in SAVE_TENSORS:
        raise ValueError(f"save_tensors must be one of {SAVE_TENSORS}, got {save_tensors!r}")
    lockstep = lockstep_default() if lockstep is None else lockstep
    plots.preload()                    # the report's plot, imported while the passes run
    stores = []

    def new_store():
        stores.append(TensorStore(out_dir))
        return stores[-1]
    try:
        run = None
        if lockstep:
            pipeline = _float64_lockstep if dtype == "float64" else _float32_lockstep
            run = pipeline(torch_model, paddle_model, inputs, outputs_fn, float64_view, save_tensors, new_store,
                           out_dir)
            if run is None:            # keys not matchable by module call: start again, one run after the other
                for store in stores:
                    store.close()
                stores.clear()
        if run is None:
            pipeline = _float64 if dtype == "float64" else _float32
            run = pipeline(torch_model, paddle_model, inputs, outputs_fn, float64_view, save_tensors, new_store)
        t_log, p_log, results, t_keys, p_keys, timings = run
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
    results.update(_float32_outputs_verdicts(t, p, alt, {k: ref[k] for k in s64.outputs}, p64.outputs,
                                             float64_view))
    return s32, p32, results, t.keys, p.keys, _timings(t, p, alt, s64, p64)


def _float32_outputs_verdicts(t: SideRun, p: SideRun, alt: SideRun, t64: dict, p64: dict,
                              float64_view: Callable | None) -> dict:
    """The float32 verdict of each model output of runs t, p (and torch's kernel variant alt), against the
    float64 outputs t64 (torch) and p64 (Paddle); with float64_view, each selection is compared with its own
    float64 counterpart and judged by what it selected (align.selections)."""
    alt64, tv64, pv64 = t64, t64, p64
    if float64_view is not None:       # each selection's float64 counterpart, from its framework's run
        alt64 = ChainMap(float64_view(alt.outputs, t64), t64)
        tv64 = ChainMap(float64_view(t.outputs, t64), t64)
        pv64 = ChainMap(float64_view(p.outputs, p64), p64)
    both64 = [k for k in t.outputs if k in tv64 and k in pv64]
    verdicts = compare_runs("float32", Subset(t.outputs, both64), p.outputs, tv64, pv64,
                            torch_variants=[(alt.outputs, alt64)])
    judge = getattr(float64_view, "judge", None)
    if judge is not None:              # selections matched by what they selected (align.selections)
        verdicts.update(judge(t.outputs, p.outputs, tv64, pv64, t64, p64, [(alt.outputs, alt64)]))
    return verdicts


def _timings(t: SideRun, p: SideRun, alt: SideRun, s64: SideRun, p64: SideRun) -> dict:
    return {"torch_float32_s": t.seconds, "paddle_float32_s": p.seconds, "torch_variant_float32_s": alt.seconds,
            "torch_float64_s": s64.seconds, "paddle_float64_s": p64.seconds}


def _lockstep_runs(sides: list[tuple[str, Any, str]], inputs: dict, outputs_fn: Callable | None,
                   rendezvous: ls.Rendezvous, on_enter: dict | None = None, on_leave: dict | None = None
                   ) -> dict[str, SideRun]:
    """Eval-mode forwards of (side, model, dtype) in lockstep (align.lockstep), each module call's outputs handed
    to the rendezvous under (module, call, subkey). Returns {side: SideRun} (records None, keys those tuples,
    seconds the time the side ran)."""
    baton = ls.Baton([side for side, _, _ in sides], on_enter, on_leave)

    def job_for(side, model, dtype):
        def job(pass_on):
            fw = frameworks.of(model)
            fw.set_mode(fw.cast(model, dtype), train=False)
            tensors = {k: fw.tensor(v) for k, v in _cast_inputs(inputs, dtype).items()}

            def call_sink(name, call, flat):
                for sub, arr in flat:
                    rendezvous.deliver(side, (name, call, sub), arr)
                pass_on()
                rendezvous.resume(side)
            with fw.no_grad(), record(model, call_sink=call_sink) as rec:
                outputs = outputs_fn(model, tensors) if outputs_fn else call_model(model, tensors)
            flat = []
            flatten_outputs("output", outputs, fw.to_numpy, flat)
            del outputs, tensors
            rendezvous.end(side)
            return SideRun(None, dict(flat), rec.keys(), dict(rec.counts), 0.0)
        return job
    try:
        runs = ls.run({side: job_for(side, model, dtype) for side, model, dtype in sides}, baton)
    finally:
        rendezvous.close()
    for side, run in runs.items():
        run.seconds = baton.active[side]
    return runs


def _named(runs: dict[str, SideRun], reference: str, rendezvous: ls.Rendezvous, results: dict, t_log, p_log):
    """Report keys for a lockstep run: results and logs renamed ((module, call, subkey) and ('output', key) to
    report keys), each side's keys in its execution order; None when the keys cannot be matched by module
    call (align.lockstep.final_names)."""
    names = ls.final_names({side: run.keys for side, run in runs.items()}, runs[reference].counts,
                           {side: list(run.outputs) for side, run in runs.items()})
    if names is None or rendezvous.duplicates:
        return None
    names.update({k: k[1] for k in results if len(k) == 2})
    keys = {side: [names[k] for k in run.keys] + list(run.outputs) for side, run in runs.items()}
    return {names[k]: v for k, v in results.items()}, keys, t_log.renamed(names), p_log.renamed(names)


def _log_pair(t_log, p_log, key, t, p, result, save_tensors, summaries=None, names=("t", "p")):
    """Both sides' values of a compared key into the logs: whole where the report saves them, else their
    statistics (from summaries, when the comparison already read them)."""
    if save_tensors == "all" or not result["passed"] or summaries is None:
        whole = save_tensors == "all" or not result["passed"]
        t_log.put(key, t, whole=whole)
        p_log.put(key, p, whole=whole)
        return
    t_log.put_stats(key, summaries.stats(names[0]))
    p_log.put_stats(key, summaries.stats(names[1]))


def _float64_lockstep(torch_model, paddle_model, inputs, outputs_fn, float64_view, save_tensors, new_store, out_dir):
    """torch and Paddle in float64, each module's outputs compared when both have them."""
    t_log, p_log, results = new_store(), new_store(), {}

    def complete(key, got):
        t, p = got.get("torch"), got.get("paddle")
        if t is None or p is None:
            return
        one_pass = Summaries.of({"t": t, "p": p}, diffs=[("t", "p")], stats=("t", "p"))   # one read for all
        if one_pass is None:
            results[key] = check_float64_or_exact(t, p)
        else:
            results[key] = judge_float64(one_pass.diff("t", "p"))
        _log_pair(t_log, p_log, key, t, p, results[key], save_tensors, one_pass)
    rendezvous = ls.Rendezvous(["torch", "paddle"], complete, out_dir)
    runs = _lockstep_runs([("torch", torch_model, "float64"), ("paddle", paddle_model, "float64")], inputs,
                          outputs_fn, rendezvous)
    t, p = runs["torch"], runs["paddle"]
    for key, value in p.outputs.items():
        if key in t.outputs:
            results["output", key] = check_float64_or_exact(t.outputs[key], value)
            _log_pair(t_log, p_log, ("output", key), t.outputs[key], value, results["output", key], save_tensors)
    named = _named(runs, "torch", rendezvous, results, t_log, p_log)
    if named is None:
        return None
    results, keys, t_log, p_log = named
    return (t_log, p_log, results, keys["torch"], keys["paddle"],
            {"torch_float64_s": t.seconds, "paddle_float64_s": p.seconds})


def _kernel_switch() -> tuple[Callable, Callable]:
    """(enter, leave): torch's other convolution backend on, then back (torch_kernel_variant, one turn at a time)."""
    import torch
    default = torch.backends.mkldnn.enabled

    def enter():
        torch.backends.mkldnn.enabled = not default

    def leave():
        torch.backends.mkldnn.enabled = default
    return enter, leave


def _float32_lockstep(torch_model, paddle_model, inputs, outputs_fn, float64_view, save_tensors, new_store, out_dir):
    """The five runs of _float32 in lockstep, on copies of the models (torch's three runs, Paddle's float64 run),
    each module's verdict taken when all five have its outputs; the final outputs as _float32 does."""
    try:
        s64_model, t32_model, alt_model = (copy.deepcopy(torch_model) for _ in range(3))
        frameworks.of(paddle_model).cast(paddle_model, "float32")   # as _float32: Paddle's float64 run from float32
        p64_model = copy.deepcopy(paddle_model)
    except Exception:                  # a model that cannot be copied: one run after the other
        return None
    t_log, p_log, results = new_store(), new_store(), {}

    def complete(key, got):
        t32, p32, s64, p64, alt = (got.get(s) for s in ("t32", "p32", "s64", "p64", "alt"))
        if t32 is None or p32 is None:
            return
        if not np.issubdtype(t32.dtype, np.floating):
            results[key] = check_float64_or_exact(t32, p32)          # integers: equality
        elif s64 is None or p64 is None:
            return                                                   # missing in a float64 run
        else:
            arrays = {"t32": t32, "p32": p32, "s64": s64, "p64": p64}
            maxes = [("t32", "s64"), ("p32", "p64")]
            if alt is not None:
                arrays["alt"] = alt
                maxes += [("alt", "s64"), ("alt", "p32")]
            one_pass = Summaries.of(arrays, diffs=[("t32", "p32"), ("s64", "p64")], maxes=maxes, stats=("t32", "p32"))
            if one_pass is not None:        # every number below from one read of the five arrays
                diff, max_abs, scale = one_pass.diff, one_pass.max_abs, one_pass.scale
            else:
                def diff(a, b):
                    return diff_stats(arrays[a], arrays[b])

                def max_abs(a, b):
                    return max_abs_diff(arrays[a], arrays[b])

                def scale(a):
                    return scale_of(arrays[a])
            with_alt = alt is not None
            results[key] = float32_verdict(diff("t32", "p32"), scale("s64"), max_abs("t32", "s64"),
                                           [max_abs("alt", "s64")] if with_alt else [], max_abs("p32", "p64"),
                                           diff("s64", "p64")["max_rel"],
                                           cross_alt=[max_abs("alt", "p32")] if with_alt else [])
            _log_pair(t_log, p_log, key, t32, p32, results[key], save_tensors, one_pass, ("t32", "p32"))
            return
        _log_pair(t_log, p_log, key, t32, p32, results[key], save_tensors)
    enter, leave = _kernel_switch()
    # the float64 runs last: the value arriving last is compared where it lies, every other one is copied
    sides = [("t32", t32_model, "float32"), ("alt", alt_model, "float32"), ("p32", paddle_model, "float32"),
             ("s64", s64_model, "float64"), ("p64", p64_model, "float64")]
    rendezvous = ls.Rendezvous([s for s, _, _ in sides], complete, out_dir)
    try:
        runs = _lockstep_runs(sides, inputs, outputs_fn, rendezvous, {"alt": enter}, {"alt": leave})
    finally:
        leave()
        del s64_model, t32_model, alt_model, p64_model
    t, p, alt, s64, p64 = (runs[s] for s in ("t32", "p32", "alt", "s64", "p64"))
    frameworks.of(torch_model).cast(torch_model, "float32")
    final = _float32_outputs_verdicts(t, p, alt, s64.outputs, p64.outputs, float64_view)
    for key, result in final.items():
        results["output", key] = result
        if key in t.outputs and key in p.outputs:
            _log_pair(t_log, p_log, ("output", key), t.outputs[key], p.outputs[key], result, save_tensors)
    named = _named(runs, "s64", rendezvous, results, t_log, p_log)
    if named is None:
        return None
    results, keys, t_log, p_log = named
    return t_log, p_log, results, keys["t32"], keys["p32"], _timings(t, p, alt, s64, p64)
