"""Run one loss spec (align/loss_specs/<name>.py) in torch, Paddle and NumPy; write the standard report.

    summary = run_spec(load_spec("ghmc"), "float64", "reports")   # -> reports/losses/ghmc/

For every case and every step (stateful losses run several consecutive calls on one object) both twins
get the same seeded inputs; the runner logs each output, the gradient of the sum of all outputs w.r.t.
every input in case.grad_wrt (an input the loss does not differentiate logs zeros), the state after the
step (spec.torch_state / spec.paddle_state) and the discrete diagnostics (spec.diagnostics, see below).
Keys: "<case>[/step<k>]/<loss|grad|state|bins>/<name>". Each key gets two rows in the report:
  "<key>"            torch vs Paddle: float64 max_rel <= 1e-9; float32 against the noise floor
                     (align.compare.check_float32, with the float64 runs of both twins);
  "<key> vs numpy"   both twins' float64 runs vs the float64 NumPy reference: max_rel <= 1e-9
                     (in a float32 report too: float64 proves semantics). Integer keys must be equal.

Diagnostics contract: spec.diagnostics(framework_name, loss_object, tensors) -> {name: integer tensor},
called before each step's loss call (e.g. GHM's bin index of every element); the NumPy reference returns
the same names under "diag". Float64: they must equal across twins and NumPy exactly. Float32: when the
twins disagree on some element (a 1-ulp difference moved it across a bin edge), the case is judged by
the float32-events rule (align.compare.check_float32_events) using spec.extra["reference_with_diag"](steps, grad_wrt,
diag_steps) (the NumPy definition evaluated on one twin's own assignment) and every moved element must
be explained by spec.extra["explain_diag"](steps, torch_diag_steps, paddle_diag_steps) (adjacent bins,
float64 value within a few float32 ulps of the edge between them). summary["bin_moves"] counts them.
"""
from __future__ import annotations

import importlib
import time
from collections import OrderedDict

import numpy as np

from align import frameworks
from align.compare import (
    check_dtype,
    check_exact,
    check_exact_events,
    check_float32,
    check_float32_events,
    check_float64,
)
from align.loss_specs import LossCase, LossSpec
from align.report import save_reprod_log, write_report

LOSS_NAMES = ("focal", "ghmc", "ghmr", "aploss", "smooth_l1", "balanced_l1", "varifocal", "giou", "dfl")
SECTIONS = (("outputs", "loss"), ("grads", "grad"), ("state", "state"), ("diag", "bins"))


def load_spec(name: str) -> LossSpec | None:
    """The SPEC of align/loss_specs/<name>.py, or None when that module does not exist (yet)."""
    if name not in LOSS_NAMES:
        raise ValueError(f"loss must be one of {LOSS_NAMES}, got {name!r}")
    module_name = f"align.loss_specs.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return None
        raise
    return module.SPEC


def _floats_or_int64(value):
    """Case arrays: floating ones as they are (cast to the run's dtype), every other one as int64."""
    value = np.asarray(value)
    return value if np.issubdtype(value.dtype, np.floating) else value.astype(np.int64)


def _backward(fw, outputs):
    """Backward of the sum of every output, when it carries a gradient."""
    total = sum(o.sum() for o in outputs.values())
    if fw.is_tensor(total) and fw.requires_grad(total):
        fw.backward(total)


def _as_dict(out):
    if isinstance(out, dict):
        return OrderedDict(out)
    if isinstance(out, (tuple, list)):
        return OrderedDict((str(i), o) for i, o in enumerate(out))
    return OrderedDict(loss=out)


def run_framework(side: frameworks.Framework, spec: LossSpec, case: LossCase,
                  dtype: str) -> list[dict[str, dict[str, np.ndarray]]]:
    """One twin on every step of a case: [{"outputs", "grads", "state", "diag"} of arrays per step]."""
    build, state_fn = getattr(spec, f"build_{side.name}"), getattr(spec, f"{side.name}_state")
    obj = build(dtype)
    records = []
    for step in case.steps:
        tensors = {k: side.tensor(_floats_or_int64(v), dtype, k in case.grad_wrt) for k, v in step.items()}
        diag = spec.diagnostics(side.name, obj, tensors) if spec.diagnostics else {}
        outputs = _as_dict(obj(**tensors))
        _backward(side, outputs)
        records.append({
            "outputs": {k: side.to_numpy(v) for k, v in outputs.items()},
            "grads": {k: side.grad_of(tensors[k], np.shape(step[k])) for k in case.grad_wrt},
            "state": {k: np.asarray(v) for k, v in (state_fn(obj) if state_fn else {}).items()},
            "diag": {k: side.to_numpy(v).astype(np.int64) for k, v in diag.items()},
        })
    return records


def flatten(case: LossCase, records: list[dict]) -> dict[str, np.ndarray]:
    """[{section: {name: array}}] -> {"case[/stepK]/section/name": array} in execution order."""
    flat = OrderedDict()
    for k, rec in enumerate(records):
        prefix = case.name if len(records) == 1 else f"{case.name}/step{k}"
        for section, label in SECTIONS:
            for name, value in rec.get(section, {}).items():
                flat[f"{prefix}/{label}/{name}"] = np.asarray(value)
    return flat


def judge_twins(t, p, dtype: str, t64=None, p64=None, replays=None, events: dict | None = None,
                int_events: tuple | None = None) -> dict:
    """torch vs Paddle on one key, by the rule its values call for: integers equal (rule exact-events where
    int_events = (moved, unexplained[, event name]): every differing element explained), float64 max_rel,
    float32 against the noise floor of the float64 runs t64, p64, or float32-events where replays =
    (ref_torch, ref_paddle), the float64 definition evaluated on each float32 run's own decisions."""
    if not np.issubdtype(np.asarray(t).dtype, np.floating):
        return check_exact(t, p) if int_events is None else check_exact_events(t, p, *int_events)
    if dtype == "float64":
        return check_float64(t, p)
    if replays is not None:
        return check_float32_events(t, p, replays[0], replays[1], t64, p64, events=events or {})
    return check_float32(t, p, t64, p64)


def vs_numpy(ref, t, p):
    """Both twins (float64 runs) against the NumPy reference in one row."""
    is_int = not np.issubdtype(np.asarray(ref).dtype, np.floating)
    check = check_exact if is_int else check_float64
    st, sp = check(ref, t), check(ref, p)
    return {"max_abs": max(st["max_abs"], sp["max_abs"]), "mean_abs": max(st["mean_abs"], sp["mean_abs"]),
            "max_rel": max(st["max_rel"], sp["max_rel"]), "rule": st["rule"], "ratio": max(st["ratio"], sp["ratio"]),
            "torch_max_rel": st["max_rel"],
            "paddle_max_rel": sp["max_rel"], "passed": bool(st["passed"] and sp["passed"])}


def _count_moves(a, b):
    return int(np.sum(np.asarray(a) != np.asarray(b)))


def compare_case(spec: LossSpec, case: LossCase, dtype: str, runs: dict[str, list[dict]], reference: list[dict]
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict], dict]:
    """results {row: stats} for one case and its bin-move record. runs: {"torch", "paddle"[, "torch64", ...]}."""
    t_log, p_log = flatten(case, runs["torch"]), flatten(case, runs["paddle"])
    t64 = flatten(case, runs.get("torch64", runs["torch"]))
    p64 = flatten(case, runs.get("paddle64", runs["paddle"]))
    ref = flatten(case, reference)
    moves = {}
    for k, (rt, rp, rn) in enumerate(zip(runs["torch"], runs["paddle"], reference)):
        for name in rt["diag"]:
            moves.setdefault(f"step{k}", {})[name] = {
                "torch_vs_paddle": _count_moves(rt["diag"][name], rp["diag"][name]),
                "torch_vs_numpy": _count_moves(rt["diag"][name], rn["diag"][name]),
                "paddle_vs_numpy": _count_moves(rp["diag"][name], rn["diag"][name])}
    moved_count = sum(m["torch_vs_paddle"] for step in moves.values() for m in step.values())
    moved = moved_count > 0
    rebinned = dtype == "float32" and moved
    if rebinned:
        t_diag = [r["diag"] for r in runs["torch"]]
        p_diag = [r["diag"] for r in runs["paddle"]]
        explained = spec.extra["explain_diag"](case.steps, t_diag, p_diag)
        for k, per_name in enumerate(explained):
            for name, info in per_name.items():
                moves[f"step{k}"][name].update(info)
        ref_t = flatten(case, spec.extra["reference_with_diag"](case.steps, case.grad_wrt, t_diag))
        ref_p = flatten(case, spec.extra["reference_with_diag"](case.steps, case.grad_wrt, p_diag))
    results = OrderedDict()
    for key in _union(t_log, p_log, ref):
        if key not in t_log or key not in p_log:
            results[key] = _missing_row([side for side, log in (("torch", t_log), ("paddle", p_log), ("numpy", ref))
                                         if key not in log])
            continue
        t, p = t_log[key], p_log[key]
        int_events = replays = None
        if rebinned and not np.issubdtype(t.dtype, np.floating):
            info = moves[_step_of(key)][key.rsplit("/", 1)[1]]
            int_events = (info["torch_vs_paddle"], info["unexplained"])
        elif rebinned:
            replays = (ref_t[key], ref_p[key])
        results[key] = judge_twins(t, p, dtype, t64[key], p64[key], replays, {"moved_bins": moved_count}, int_events)
        results[f"{key} vs numpy"] = vs_numpy(ref[key], t64[key], p64[key]) if key in ref else _missing_row(["numpy"])
    common = [k for k in t_log if k in p_log]
    info = {"steps": len(case.steps), "note": case.note, "rule": "float32-events" if rebinned else "standard",
            "inputs": {k: list(np.shape(v)) for k, v in case.steps[0].items()}}
    if moves:
        info["bin_moves"] = moves
    return ({k: t_log[k] for k in common}, {k: p_log[k] for k in common}, results, info)


def _union(*logs):
    keys = OrderedDict()
    for log in logs:
        keys.update((k, None) for k in log)
    return list(keys)


def _missing_row(missing_in):
    inf = float("inf")
    return {"max_abs": inf, "mean_abs": inf, "max_rel": inf, "missing_in": missing_in, "passed": False}


def _step_of(key):
    parts = key.split("/")
    return parts[1] if len(parts) > 3 and parts[1].startswith("step") else "step0"


def run_sides(run, sides: dict, spec, case, dtype: str, timings: dict) -> dict:
    """{"torch": ..., "paddle": ...} of run(framework, spec, case, dtype), plus "torch64"/"paddle64" (the float64
    twins, for the noise floor) in float32; each side's time is added to timings["<side>_s"]."""
    runs = {}
    for label, side in sides.items():
        start = time.perf_counter()
        runs[label] = run(side, spec, case, dtype)
        if dtype == "float32":
            runs[label + "64"] = run(side, spec, case, "float64")
        timings[f"{label}_s"] += time.perf_counter() - start
    return runs


def run_spec(spec: LossSpec, dtype: str = "float64", out: str = "reports", seed: int = 0) -> dict:
    """Run every case of `spec` in `dtype`; write DIR/losses/<name>/ and return the summary."""
    check_dtype(dtype)
    sides = {fw.name: fw for fw in frameworks.pair()}
    cases = spec.make_cases(np.random.default_rng(seed))
    torch_log, paddle_log, numpy_log, results = OrderedDict(), OrderedDict(), OrderedDict(), OrderedDict()
    case_info = {}
    timings = {"torch_s": 0.0, "paddle_s": 0.0, "numpy_s": 0.0}
    for case in cases:
        runs = run_sides(run_framework, sides, spec, case, dtype, timings)
        start = time.perf_counter()
        reference = spec.numpy_reference(case.steps, case.grad_wrt)
        timings["numpy_s"] += time.perf_counter() - start
        t_log, p_log, case_results, info = compare_case(spec, case, dtype, runs, reference)
        torch_log.update(t_log)
        paddle_log.update(p_log)
        numpy_log.update(flatten(case, reference))
        results.update(case_results)
        case_info[case.name] = info
    extra = {"loss": spec.name, "description": spec.description, "seed": seed, "cases": case_info,
             "timings": timings,
             "notes": ("rows '<key>': torch vs paddle; rows '<key> vs numpy': both twins' float64 runs vs the "
                       "float64 NumPy reference (max_rel <= 1e-9)")}
    moves = {c: i["bin_moves"] for c, i in case_info.items() if "bin_moves" in i}
    if moves:
        extra["bin_moves"] = moves
    rebinned = [c for c, i in case_info.items() if i["rule"] == "float32-events"]
    if rebinned:
        extra["notes"] += (f"; cases {rebinned} had elements in different bins in the two float32 twins and are "
                           "judged by the float32-events rule: residual_abs (summary.json) <= tolerance_abs, moved "
                           "elements explained (bin_moves)")
    out_dir = f"{out}/losses/{spec.name}"
    return write_report(out_dir, f"loss:{spec.name}", dtype, torch_log, paddle_log, results,
                        order=list(results), extra=extra,
                        files={"numpy.npy": lambda path: save_reprod_log(path, numpy_log)})
