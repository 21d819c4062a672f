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
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import numpy as np

from align import frameworks
from align.compare import check_dtype, compare_runs
from align.explain import diagnose
from align.hooks import flatten_outputs, match_records, record
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


def run_side(model: Any, inputs: dict[str, np.ndarray], dtype: str, outputs_fn: Callable | None = None,
             store: TensorStore | None = None, keep: bool = True) -> tuple[Mapping, float]:
    """One eval-mode forward of a model of either framework in `dtype`; returns ({key: array} of every named
    submodule's output then the final outputs, seconds). With a store the arrays wait on disk; keep=False
    records nothing (a rerun for hooks of its own)."""
    fw = frameworks.of(model)
    fw.set_mode(fw.cast(model, dtype), train=False)
    tensors = {k: fw.tensor(v) for k, v in _cast_inputs(inputs, dtype).items()}
    start = time.perf_counter()
    with fw.no_grad(), record(model, store, keep) as rec:
        outputs = outputs_fn(model, tensors) if outputs_fn else call_model(model, tensors)
    seconds = time.perf_counter() - start
    records = rec.records()
    flat = []
    flatten_outputs("output", outputs, fw.to_numpy, flat)
    for k, v in flat:
        records.put(k, v)
    return records, seconds


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
    first divergence, 'none'); every other key keeps its statistics (align.report). Recorded tensors wait
    on disk under out_dir while the runs compare (align.store), so memory stays one tensor per run.
    """
    check_dtype(dtype)
    if save_tensors not in SAVE_TENSORS:
        raise ValueError(f"save_tensors must be one of {SAVE_TENSORS}, got {save_tensors!r}")
    stores = []

    def run(model, run_dtype):
        stores.append(TensorStore(out_dir))
        return run_side(model, inputs, run_dtype, outputs_fn, stores[-1])
    try:
        return _align_forward(torch_model, paddle_model, inputs, dtype, out_dir, outputs_fn, check, extra,
                              float64_view, save_tensors, run)
    finally:
        for store in stores:
            store.close()


def _align_forward(torch_model, paddle_model, inputs, dtype, out_dir, outputs_fn, check, extra, float64_view,
                   save_tensors, run):
    t_rec, t_sec = run(torch_model, dtype)
    p_rec, p_sec = run(paddle_model, dtype)
    matched, unmatched = match_records(t_rec, p_rec)
    timings = {f"torch_{dtype}_s": t_sec, f"paddle_{dtype}_s": p_sec}
    if dtype == "float64":
        results = compare_runs(dtype, Subset(t_rec, matched), p_rec)
    else:
        with torch_kernel_variant():
            alt, alt_sec = run(torch_model, dtype)
        t64, t64_sec = run(torch_model, "float64")
        p64, p64_sec = run(paddle_model, "float64")
        for model in (torch_model, paddle_model):
            frameworks.of(model).cast(model, "float32")
        timings.update(torch_variant_float32_s=alt_sec, torch_float64_s=t64_sec, paddle_float64_s=p64_sec)
        alt64 = t64
        if float64_view is not None:       # each selection's float64 counterpart, from its framework's run
            alt64 = ChainMap(float64_view(alt, t64), t64)
            t64 = ChainMap(float64_view(t_rec, t64), t64)
            p64 = ChainMap(float64_view(p_rec, p64), p64)
        both64 = [k for k in matched if k in t64 and k in p64]
        unmatched["missing_in_float64_run"] = [k for k in matched if k not in both64]
        results = compare_runs(dtype, Subset(t_rec, both64), p_rec, t64, p64, torch_variants=[(alt, alt64)])
    summary_extra = {"unmatched": unmatched, "timings": timings,
                     "inputs": {k: list(np.shape(v)) for k, v in inputs.items()}}
    summary_extra.update(extra or {})

    def explain(first):
        return diagnose(torch_model, paddle_model, "forward", dtype, results, first, t_rec, p_rec,
                        run_torch=lambda: run_side(torch_model, inputs, dtype, outputs_fn, keep=False))
    return write_report(out_dir, check, dtype, Subset(t_rec, results), Subset(p_rec, results),
                        results, order=list(results), extra=summary_extra, explain=explain,
                        save_tensors=save_tensors, plot=True)
