"""Run PP-YOLOE's assigner twins and their float64 NumPy reference on seeded cases; write the standard report.

    summary = run_assigner("atss", "float64", "reports")   # -> reports/assigners/atss/ ("tal": task-aligned)

Twins: torch_ref/assigners/{atss,task_aligned}.py and paddle_impl/assigners/ (../shared/specs/ppyoloe.md A.9,
A.10, A.14); reference: align/numpy_ref/ppyoloe_assign.py. Every case (CASES: ties, padded GTs, a GT with no
anchor centre inside, one GT, many overlapping GTs, a random batch; each drawn several times from one NumPy
generator seeded by `seed`) goes to both twins and the reference. Float inputs are float32-exact, so both
dtypes see the same values, but for the tiny_gt case's corner margins of 5e-10, which only float64 holds.
Keys "<case>/<output>", output one of the assigners' four: labels, bboxes, scores, mask_positive (logged as
int64; the assigned GT index is its argmax over the GTs). Each key gets two rows, as in loss_diff
(align/loss_runner.judge_twins and vs_numpy):
  "<key>"            torch vs Paddle: labels and mask_positive equal; float64 max_rel <= 1e-9; float32
                     against the noise floor of both twins' float64 runs;
  "<key> vs numpy"   both twins' float64 runs vs the reference: labels and mask equal, max_rel <= 1e-9.

Topk ties: the twins and PaddleDetection take each framework's native topk, whose order among equal values
is no lowest-index rule (A.14 #5). The reference takes its topk selections from Paddle's topk on its own
float64 values (PaddleDetection's paddle.topk), so tied cases are compared exactly too;
summary["cases"][case]["topk_ties"] counts the selections where that differs from the lowest-index rule
(the ties case must have some).

Float32: where the twins' float32 runs assign an anchor differently (labels or mask_positive differ), each
such anchor must be explained by a decision whose float64 value lies within a few float32 ulps of its
boundary (FLIP_ULPS of the operands' magnitude, times alpha + beta for the task-aligned metric): a topk
boundary (ATSS: a GT whose k-th and (k+1)-th nearest centres are that close, which can move its threshold
too; TAL: the anchor's metric at its GT's topk boundary), ATSS's IoU > mean + std threshold, the
inside-the-GT margin, or the multi-GT argmax between two IoUs. labels and mask_positive are then judged by
the rule exact-events (unexplained flips fail), bboxes and scores by float32-events against the float64
targets of each float32 run's own mask (numpy_ref atss_targets / task_aligned_targets);
summary["cases"][case]["flips"] counts the flipped anchors and what explained them. Measured (--seed 4, TAL
ties/2): four anchors of exactly equal metric at a GT's topk boundary; in float32 the Paddle twin keeps another
of them than torch's twin and PaddleDetection's dense form (in either framework) do; float64 agrees.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from align import assign_cases, frameworks
from align.compare import check_dtype
from align.loss_runner import judge_twins, run_sides, vs_numpy
from align.numpy_ref import ppyoloe_assign as ref
from align.report import save_reprod_log, write_report

ASSIGNER_NAMES = assign_cases.ASSIGNER_NAMES
OUTPUTS = ("labels", "bboxes", "scores", "mask_positive")
DISCRETE = ("labels", "mask_positive")
NUM_CLASSES = 20                                   # bg_index = NUM_CLASSES (PP-YOLOE: 80 of 80); 20 keep reports small
SMALL, LARGE = (128, 160), (320, 320)              # image (height, width): 420 and 2100 anchors
# case kind -> (draws, GT kind of align.assign_cases.gt_case, batch, n_max, image, note)
CASES = OrderedDict([
    ("ties", (4, "centred", 3, 10, SMALL, "integer GTs centred on anchor centres: equal distances at the topk "
                                          "boundary, a duplicated GT (equal IoUs); TAL: integer predictions, "
                                          "three score values (tied metrics)")),
    ("padded", (3, "float", 4, 12, SMALL, "images with different GT counts: zero-box padding GTs")),
    ("tiny_gt", (3, "tiny", 3, 7, SMALL, "GT 0 of every image lies between anchor centres: no centre inside; GT 1 "
                                         "(where there is one) has stride-8 centres on its four corners, 5e-10 "
                                         "inside: outside by the 1e-9 margin (A.9 step 6)")),
    ("single_gt", (3, "single", 1, 1, SMALL, "one image, one GT")),
    ("overlap", (3, "overlap", 2, 30, SMALL, "up to 30 jittered copies of one box per image: multi-GT anchors "
                                             "resolved by the argmax over all GTs")),
    ("random", (2, "float", 4, 30, LARGE, "a random batch on a 320 x 320 grid")),
])
EDGE_MARGIN = 5e-10                                # below check_points_inside_bboxes' eps 1e-9
FLIP_ULPS = 16                                     # "within a few float32 ulps" of a decision's boundary
EPS32, TINY32 = float(np.finfo(np.float32).eps), float(np.finfo(np.float32).tiny)


@dataclass
class AssignCase:
    name: str
    kind: str
    arrays: dict                    # input name -> float64 (float32-exact) or int64 array
    counts: list                    # anchors per level
    note: str = ""
    info: dict = field(default_factory=dict)


@dataclass
class AssignerSpec:
    name: str
    description: str
    build: Callable                 # (framework name) -> assigner object
    call: Callable                  # (assigner, tensors, case) -> (labels, bboxes, scores, mask_positive)
    reference: Callable             # (case, select) -> (labels, bboxes, scores, mask_positive, info)
    targets: Callable               # (case, mask_positive) -> (labels, bboxes, scores): float64, that mask's
    sites: Callable                 # (case, decisions) -> {site: (B, n, L) bool}: decisions within FLIP_ULPS


# ------------------------------------------------------------------------------------------------------- cases
def make_cases(rng: np.random.Generator, name: str, kinds=None) -> list[AssignCase]:
    """Every draw of every case kind (or of `kinds`), in order, from one generator."""
    unknown = sorted(set(kinds or ()) - set(CASES))
    if unknown:
        raise ValueError(f"unknown case kinds {unknown}; the kinds are {', '.join(CASES)}")
    out = []
    anchors = {size: assign_cases.grid_anchors(*size) for size in (SMALL, LARGE)}
    for kind, (draws, gt_kind, batch, n_max, size, note) in CASES.items():
        for draw in range(draws):
            case = _case(rng, name, kind, draw, gt_kind, batch, n_max, size, anchors[size])
            if kinds is None or kind in kinds:
                out.append(AssignCase(f"{kind}/{draw}", kind, case, anchors[size][2], note))
    return out


def _case(rng, name, kind, draw, gt_kind, batch, n_max, size, anchors):
    height, width = size
    anchor_boxes, points, _ = anchors
    labels, boxes, pad = assign_cases.gt_case(rng, gt_kind, batch, n_max, width, height, NUM_CLASSES)
    if kind == "tiny_gt":                # move the tiny GT by whole stride-8 cells: still between all centres
        boxes[:, 0] += 8.0 * np.tile(rng.integers(0, [width // 8 - 1, height // 8 - 1], (len(boxes), 2)), 2)
    pred_kind = "float"
    if kind == "ties":                   # integer predictions; TAL's every other draw three boxes per image
        pred_kind = ("tied", "int")[draw % 2] if name == "tal" else "int"
    pred = assign_cases.pred_boxes(rng, points, len(boxes), pred_kind)
    arrays = {"gt_labels": labels, "gt_bboxes": boxes, "pad_gt_mask": pad}
    if name == "atss":
        arrays["anchor_bboxes"] = anchor_boxes
        if draw % 3 != 2:                # every third draw without predictions: one-hot scores
            arrays["pred_bboxes"] = pred
    else:
        arrays.update(pred_scores=assign_cases.pred_scores(rng, len(boxes), len(points), pred_kind, NUM_CLASSES),
                      pred_bboxes=pred, anchor_points=points)
    arrays = {k: assign_cases.float32_exact(v) for k, v in arrays.items()}
    if kind == "tiny_gt":                # 8 x 8 px GTs with anchor centres EDGE_MARGIN inside their corners
        corner = 4.0 + 8.0 * rng.integers(0, [width // 8 - 1, height // 8 - 1], (len(boxes), 2))
        edge = np.concatenate([corner - EDGE_MARGIN, corner + 8.0 + EDGE_MARGIN], axis=1)
        real = arrays["pad_gt_mask"][:, 1, 0] > 0 if boxes.shape[1] > 1 else np.zeros(len(boxes), bool)
        arrays["gt_bboxes"][real, 1] = edge[real]             # float64 only: float32 rounds the margin away
    return arrays


# ------------------------------------------------------------------------------------------------- assigners
def paddle_topk(values: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """The reference's topk selections: Paddle's native topk, as PaddleDetection calls it (A.14 #5)."""
    import paddle
    return paddle.topk(paddle.to_tensor(values), k, largest=largest)[1].numpy()


def _atss_class(framework):
    if framework == "torch":
        from torch_ref.assigners.atss import ATSSAssigner
    else:
        from paddle_impl.assigners.atss import ATSSAssigner
    return ATSSAssigner(num_classes=NUM_CLASSES)


def _tal_class(framework):
    if framework == "torch":
        from torch_ref.assigners.task_aligned import TaskAlignedAssigner
    else:
        from paddle_impl.assigners.task_aligned import TaskAlignedAssigner
    return TaskAlignedAssigner(num_classes=NUM_CLASSES)


def _atss_call(assigner, t, case):
    return assigner(t["anchor_bboxes"], case.counts, t["gt_labels"], t["gt_bboxes"], t["pad_gt_mask"], NUM_CLASSES,
                    t.get("pred_bboxes"))


def _tal_call(assigner, t, case):
    return assigner(t["pred_scores"], t["pred_bboxes"], t["anchor_points"], case.counts, t["gt_labels"],
                    t["gt_bboxes"], t["pad_gt_mask"], NUM_CLASSES)


def _atss_reference(case, select):
    a = case.arrays
    return ref.atss_assign(a["anchor_bboxes"], case.counts, a["gt_labels"], a["gt_bboxes"], a["pad_gt_mask"],
                           NUM_CLASSES, a.get("pred_bboxes"), num_classes=NUM_CLASSES, return_info=True,
                           select=select)


def _tal_reference(case, select):
    a = case.arrays
    return ref.task_aligned_assign(a["pred_scores"], a["pred_bboxes"], a["anchor_points"], case.counts, a["gt_labels"],
                                   a["gt_bboxes"], a["pad_gt_mask"], NUM_CLASSES, return_info=True, select=select)


def _atss_targets(case, mask):
    a = case.arrays
    return ref.atss_targets(mask, a["gt_labels"], a["gt_bboxes"], NUM_CLASSES, a.get("pred_bboxes"), NUM_CLASSES)


def _tal_targets(case, mask):
    a = case.arrays
    return ref.task_aligned_targets(mask, a["pred_scores"], a["pred_bboxes"], a["gt_labels"], a["gt_bboxes"],
                                    NUM_CLASSES)


def _near(a, b, scale, ulps=FLIP_ULPS, floor=0.0):
    """|a - b| within `ulps` float32 ulps of `scale` (plus `floor`); False where a or b is not finite."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) <= ulps * EPS32 * scale + floor)


def _common_sites(case, decisions):
    """The inside-the-GT margin and the multi-GT argmax (top two IoUs over all GTs), as (B, n, L)."""
    a = case.arrays
    coords = max(float(np.abs(a["gt_bboxes"]).max()),
                 float(np.abs(a.get("anchor_points", a.get("anchor_bboxes"))).max()))
    margin = decisions["inside_margin"]
    ious = decisions["ious"]
    top = np.sort(ious, axis=1)[:, ::-1]
    multi = (_near(top[:, 0], top[:, 1], top[:, 0]) if ious.shape[1] > 1 else np.zeros(top[:, 0].shape, bool))
    return {"inside": np.nan_to_num(np.abs(margin), nan=np.inf) <= FLIP_ULPS * EPS32 * coords,
            "multi_gt": np.broadcast_to(multi[:, None], ious.shape)}


def _atss_sites(case, decisions):
    edge = decisions["topk_edge"]                                  # (B, n, levels, 2)
    topk = _near(edge[..., 0], edge[..., 1], edge[..., 1]).any(-1)      # any level: its candidates may move
    ious, thr = decisions["ious"], decisions["threshold"][..., None]
    threshold = decisions["candidate"] & _near(ious, thr, np.maximum(np.abs(ious), np.abs(thr)))
    return {"topk": np.broadcast_to(topk[..., None], ious.shape), "threshold": threshold,
            **_common_sites(case, decisions)}


def _tal_sites(case, decisions, alpha=1.0, beta=6.0):             # the assigner's defaults, as SPECS builds it
    values = decisions["metrics"] * (decisions["inside_margin"] > 0)
    kth, next_ = decisions["topk_edge"][..., 0:1], decisions["topk_edge"][..., 1:2]
    ulps = FLIP_ULPS * (alpha + beta)              # pow amplifies the relative rounding of score and IoU

    def near(x, y):
        return _near(x, y, np.abs(kth), ulps, ulps * TINY32)
    topk = near(kth, next_) & (near(values, kth) | near(values, next_))
    return {"topk": topk, **_common_sites(case, decisions)}


SPECS = {
    "atss": AssignerSpec("atss", "PP-YOLOE's static ATSS assigner (A.9): anchor boxes, topk 9 per level",
                         _atss_class, _atss_call, _atss_reference, _atss_targets, _atss_sites),
    "tal": AssignerSpec("tal", "PP-YOLOE's task-aligned assigner (A.10): topk 13, alpha 1, beta 6",
                        _tal_class, _tal_call, _tal_reference, _tal_targets, _tal_sites),
}


def get_spec(name: str) -> AssignerSpec:
    if name not in SPECS:
        raise ValueError(f"assigner must be one of {ASSIGNER_NAMES}, got {name!r}")
    return SPECS[name]


# ------------------------------------------------------------------------------------------------------- runs
def _as_log(outputs) -> dict[str, np.ndarray]:
    """The four outputs by name; mask_positive as int64 when it holds 0 and 1 only (it should)."""
    log = OrderedDict(zip(OUTPUTS, (np.asarray(o) for o in outputs)))
    mask = log["mask_positive"]
    if np.issubdtype(mask.dtype, np.floating) and np.isin(mask, (0.0, 1.0)).all():
        log["mask_positive"] = mask.astype(np.int64)
    return log


def run_side(side: frameworks.Framework, spec: AssignerSpec, case: AssignCase, dtype: str) -> dict[str, np.ndarray]:
    tensors = {k: side.tensor(v, dtype) for k, v in case.arrays.items()}
    return _as_log(side.to_numpy(o) for o in spec.call(spec.build(side.name), tensors, case))


def explain_flips(spec: AssignerSpec, case: AssignCase, decisions: dict, t: dict, p: dict) -> dict:
    """The anchors the two float32 runs assign differently and the near-boundary decisions that explain them:
    {"anchors", "explained": {site: anchors}, "unexplained", "labels": (moved, unexplained), "mask_positive":
    (moved, unexplained)}. A differing column is explained when one of its differing (GT, anchor) entries has
    a decision within FLIP_ULPS of its boundary; a label flip with equal masks is never explained."""
    mask_diff = t["mask_positive"] != p["mask_positive"]
    label_diff = t["labels"] != p["labels"]
    columns = mask_diff.any(axis=1) | label_diff
    sites = spec.sites(case, decisions)
    explained = np.zeros(columns.shape, bool)
    by_site = {}
    for site, near in sites.items():
        hit = (mask_diff & near).any(axis=1) & columns & ~explained
        by_site[site] = int(hit.sum())
        explained |= hit
    unexplained = columns & ~explained
    return {"anchors": int(columns.sum()), "explained": by_site, "unexplained": int(unexplained.sum()),
            "labels": (int(label_diff.sum()), int((label_diff & unexplained).sum()), "flipped"),
            "mask_positive": (int(mask_diff.sum()), int((mask_diff & unexplained[:, None, :]).sum()), "flipped")}


def _case_info(case, reference, info):
    mask = reference[3]
    out = {"kind": case.kind, "note": case.note, "inputs": {k: list(v.shape) for k, v in case.arrays.items()},
           "gts": int(case.arrays["pad_gt_mask"].sum()), "positives": int(mask.sum()),
           **{k: int(info[k]) for k in ("topk_ties", "multi_gt_anchors", "winner_not_candidate")}}
    if case.kind == "tiny_gt":
        out["tiny_gt_positives"] = int(mask[:, 0].sum())
    return out


def compare_case(spec, case, dtype, runs, reference, decisions):
    """(the reference's log, results {row: stats}) of one case; case.info gets its rule and, where the float32
    twins assign anchors differently, the flips and what explained them."""
    t, p = runs["torch"], runs["paddle"]
    t64, p64 = runs.get("torch64", t), runs.get("paddle64", p)
    ref_log = _as_log(reference[:4])
    flipped = any(not np.array_equal(t[k], p[k]) for k in DISCRETE)
    same_shapes = all(t[k].shape == p[k].shape for k in OUTPUTS)          # else the exact rule fails them
    rebinned = dtype == "float32" and flipped and same_shapes
    flips = explain_flips(spec, case, decisions, t, p) if rebinned else None
    replays = None
    if rebinned:
        replays = {side: dict(zip(OUTPUTS, spec.targets(case, run["mask_positive"]))) for side, run in
                   (("torch", t), ("paddle", p))}
        case.info["flips"] = {k: v for k, v in flips.items() if k not in DISCRETE}
    results = OrderedDict()
    for name in OUTPUTS:
        key = f"{case.name}/{name}"
        pair = (replays["torch"][name], replays["paddle"][name]) if rebinned and name not in DISCRETE else None
        results[key] = judge_twins(t[name], p[name], dtype, t64[name], p64[name], pair,
                                   {"flipped_anchors": flips["anchors"]} if flips else None,
                                   flips[name] if flips and name in DISCRETE else None)
        results[f"{key} vs numpy"] = vs_numpy(ref_log[name], t64[name], p64[name])
    case.info["rule"] = "float32-events" if rebinned else "standard"
    return ref_log, results


def run_assigner(name: str, dtype: str = "float64", out: str = "reports", seed: int = 0, kinds=None,
                 spec: AssignerSpec | None = None) -> dict:
    """Run every case of assigner `name` (or those of `kinds`) in `dtype`; write DIR/assigners/<name>/ and
    return the summary. spec: another AssignerSpec for the same cases (tests plant defects with it)."""
    check_dtype(dtype)
    spec = spec or get_spec(name)
    sides = {fw.name: fw for fw in frameworks.pair()}
    torch_log, paddle_log, numpy_log, results, cases = OrderedDict(), OrderedDict(), OrderedDict(), OrderedDict(), {}
    timings = {"torch_s": 0.0, "paddle_s": 0.0, "numpy_s": 0.0}
    for case in make_cases(np.random.default_rng(seed), name, kinds):
        runs = run_sides(run_side, sides, spec, case, dtype, timings)
        start = time.perf_counter()
        *reference, info = spec.reference(case, paddle_topk)
        timings["numpy_s"] += time.perf_counter() - start
        case.info = _case_info(case, reference, info)
        ref_log, case_results = compare_case(spec, case, dtype, runs, reference, info["decisions"])
        for log, run in ((torch_log, runs["torch"]), (paddle_log, runs["paddle"]), (numpy_log, ref_log)):
            log.update((f"{case.name}/{k}", v) for k, v in run.items())
        results.update(case_results)
        cases[case.name] = case.info
    flipped = [c for c, i in cases.items() if i["rule"] == "float32-events"]
    notes = ("rows '<key>': torch vs paddle; rows '<key> vs numpy': both twins' float64 runs vs the float64 NumPy "
             "reference (its topk selections Paddle's native topk, A.14 #5)")
    if flipped:
        notes += (f"; cases {flipped} had anchors assigned differently by the two float32 twins: each must be "
                  f"explained by a decision within {FLIP_ULPS} float32 ulps of its boundary (cases.<case>.flips), "
                  "bboxes and scores judged by the float32-events rule")
    extra = {"assigner": spec.name, "description": spec.description, "seed": seed, "num_classes": NUM_CLASSES,
             "cases": cases, "timings": timings, "notes": notes}
    return write_report(f"{out}/assigners/{name}", f"assign:{name}", dtype, torch_log, paddle_log, results,
                        order=list(results), extra=extra,
                        files={"numpy.npy": lambda path: save_reprod_log(path, numpy_log)})
