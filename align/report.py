"""The report every alignment check writes: reprod_log logs, diff.txt and summary.json, as one folder.

Layout of DIR (one check):
    torch.npy, paddle.npy  reprod_log ReprodLogger files with identical key sets (ReprodDiffHelper reads them)
    diff.txt               a table for people: one row per key, in execution order
    summary.json           the machine-readable verdict: {"passed", "dtype", "first_divergence", "keys": {...}, ...}
The folder is written whole, with a run id and the digests of its files in summary.json (align.report_folder).
The caller's exit status is 0 iff summary["passed"].
"""
from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Mapping
from typing import Callable, Iterable

import numpy as np
from reprod_log import ReprodLogger

from align import compare
from align.report_folder import new_run_id, sha256, whole_folder
from align.store import STATS_FIELDS, tensor_stats
from twin_common.atomic import atomic_path, write_json, write_text

SAVE_TENSORS = ("failing", "all", "none")


def logged_tensors(log: Mapping, results: dict, first: str | None, policy: str) -> tuple[dict, list[str]]:
    """The reprod_log content of one side: full tensors where the policy keeps them ('all'; 'failing': failing
    keys and the first divergence; 'none'), STATS_FIELDS elsewhere; and the keys saved whole."""
    full = [k for k in log if policy == "all" or (policy == "failing" and (k == first or not results[k]["passed"]))]
    keep = set(full)

    def stats(k):
        return log.stats(k) if hasattr(log, "stats") else tensor_stats(log[k])
    return {k: (log[k] if k in keep else stats(k)) for k in log}, full


def save_reprod_log(path: str | os.PathLike, data: dict[str, np.ndarray]) -> None:
    """Write a ReprodLogger file atomically (np.save appends '.npy', so the temp name keeps that suffix)."""
    logger = ReprodLogger()
    for key, value in data.items():
        logger.add(key, np.asarray(value, order="C"))
    with atomic_path(path, suffix=".npy") as tmp:
        logger.save(tmp)


def _fmt(x):
    if isinstance(x, float):
        if math.isinf(x) or math.isnan(x):
            return str(x)
        return f"{x:.3e}"
    return str(x)


def render_table(summary: dict) -> str:
    keys = summary["keys"]
    float32 = summary["dtype"] == "float32"
    cols = ["max_abs", "mean_abs", "max_rel"] + (["noise_torch", "noise_paddle", "tolerance_abs"] if float32 else [])
    cols += ["ratio"]
    lines = [
        f"check: {summary.get('check', '')}   dtype: {summary['dtype']}   passed: {summary['passed']}",
        f"first divergence: {summary['first_divergence']}",
        f"worst passed ratio: {_fmt(summary['worst_passed_ratio']['ratio'])} at {summary['worst_passed_ratio']['key']}"
        " (ratio: the fraction of its tolerance a key used; <= 1 passes)",
        "rule: " + summary["rule"],
        "",
    ]
    width = max([len(k) for k in keys] + [10])
    lines.append(f"{'key':<{width}}  " + "  ".join(f"{c:>13}" for c in cols) + "  result (rule)")
    for name, st in keys.items():
        row = "  ".join(f"{_fmt(st.get(c, '')):>13}" for c in cols)
        note = f"  ({st['rule']})" if "rule" in st else ""
        if st.get("events"):
            note += f"  events {st['events']}"
        if "shape_mismatch" in st:
            note = f"  shapes {st['shape_mismatch'][0]} vs {st['shape_mismatch'][1]}"
        elif "judged_on" in st:
            note += f"  (judged on {st['judged_on']})"
        lines.append(f"{name:<{width}}  {row}  {'ok' if st['passed'] else 'FAIL'}{note}")
    if summary.get("diagnosis"):
        from align.explain import describe
        text = describe(summary["diagnosis"])
        if text:
            lines += ["", text]
    for extra_key in ("unmatched", "notes"):
        if summary.get(extra_key):
            lines.append("")
            lines.append(f"{extra_key}: {summary[extra_key]}")
    return "\n".join(lines) + "\n"


def worst_key(summary: dict, skip: Callable[[dict], bool] = lambda stats: False) -> tuple[str, float]:
    """(key, max_rel) of the largest max_rel in a summary, leaving out keys `skip` says; ("", 0.0) if none."""
    rows = [(k, v["max_rel"]) for k, v in summary["keys"].items() if not skip(v)]
    return max(rows, key=lambda kv: kv[1]) if rows else ("", 0.0)


def environment() -> dict[str, str]:
    """Versions and code paths behind a report: what a reader needs to reproduce it."""
    env = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "paddle"):
        if name in sys.modules:
            env[name] = sys.modules[name].__version__
    for name, package in (("torch", "torch_ref"), ("paddle", "paddle_impl")):
        kernel = sys.modules.get(f"{package}.losses.ghm_kernel")
        status = kernel.status() if kernel is not None else None
        if status is not None:
            env[f"{name}_ghmc"] = status                       # CPU kernel or stock ops (see README)
    return env


def write_report(out_dir: str | os.PathLike, check: str, dtype: str, torch_log: dict[str, np.ndarray],
                 paddle_log: dict[str, np.ndarray], results: dict[str, dict], order: Iterable[str] | None = None,
                 extra: dict | None = None, fp64_max_rel: float | None = None,
                 explain: Callable[[str | None], dict] | None = None, save_tensors: str = "all",
                 plot: bool = False, files: dict[str, Callable[[str], None]] | None = None) -> dict:
    """Write the report folder whole (align.report_folder) and return the summary dict.

    results: {key: stats dict with at least 'passed'}; order: keys in execution order (first divergence
    is the first failing key in that order); extra: more fields for summary.json; fp64_max_rel: the float64
    limit the results were checked against, for the rule text (default compare.FP64_MAX_REL); explain:
    first divergence -> more summary fields (align.explain.diagnose: module classes, locality, known
    differences); save_tensors: which tensors the reprod_log files keep whole (SAVE_TENSORS; the others
    keep tensor_stats, so both files always have the same keys); plot: also divergence.png (per key, in
    order, the fraction of its tolerance used, the first divergence marked); files: {file name: writer(path)}
    of more files that belong to the report (curves.png, numpy.npy), written with it.
    """
    if save_tensors not in SAVE_TENSORS:
        raise ValueError(f"save_tensors must be one of {SAVE_TENSORS}, got {save_tensors!r}")
    if set(torch_log) != set(paddle_log):
        raise ValueError("torch and paddle logs must have identical key sets; differing: "
                         f"{sorted(set(torch_log) ^ set(paddle_log))}")
    order = list(order) if order is not None else list(results)
    missing = [k for k in results if k not in order]
    order += missing
    first = next((k for k in order if k in results and not results[k]["passed"]), None)
    worst_key_, worst_ratio = compare.worst_passed_ratio(results)
    compared = sum(int(r.get("compared", 0)) for r in results.values())
    summary = {
        "check": check,
        # a check that compared nothing (no keys, only empty tensors) fails: it would prove nothing
        "passed": bool(all(r["passed"] for r in results.values())) and compared > 0,
        "elements_compared": compared,
        "dtype": dtype,
        "first_divergence": first,
        "rule": compare.rule_text(dtype, fp64_max_rel),
        "num_keys": len(results),
        "worst_passed_ratio": {"key": worst_key_, "ratio": worst_ratio},
        "keys": {k: results[k] for k in order if k in results},
        "environment": environment(),
    }
    if extra:
        for k, v in extra.items():
            summary[k] = v
        if extra.get("unmatched") and any(extra["unmatched"].values()):
            summary["passed"] = False
    if explain is not None:
        summary.update(explain(first))
    summary["run"] = run = new_run_id()
    with whole_folder(out_dir) as tmp:
        for name, log in (("torch", torch_log), ("paddle", paddle_log)):
            data, full = logged_tensors(log, results, first, save_tensors)
            save_reprod_log(tmp / f"{name}.npy", data)
            del data
        summary["tensors_saved"] = {"policy": save_tensors, "whole": full,
                                    "others": f"statistics: {', '.join(STATS_FIELDS)}"}
        if plot:
            from align.plots import plot_divergence
            plot_divergence(tmp / "divergence.png", summary)
            summary["plot"] = "divergence.png"
        for name, writer in (files or {}).items():
            writer(str(tmp / name))
        write_text(tmp / "diff.txt", f"run: {run}\n" + render_table(summary))
        summary["files"] = {f.name: sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        write_json(tmp / "summary.json", summary)
    return summary
