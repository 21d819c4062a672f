"""assign_diff end to end (align/assign_runner.py): PP-YOLOE's ATSS and task-aligned twins against each other and
the float64 NumPy reference, ties included; the report and the gate's re-judgement; planted defects caught at
their keys; float32 flips explained or failed; bad arguments exit 2."""
import dataclasses
from collections import OrderedDict

import numpy as np
import paddle
import pytest

from align import assign_runner, cli, frameworks, manifest
from align.assign_runner import ASSIGNER_NAMES, DISCRETE, NUM_CLASSES, OUTPUTS, run_assigner
from align.gate import check_keys, gate

QUICK = ("ties", "padded", "tiny_gt", "single_gt", "overlap")     # the 320 x 320 batch: in the gate


@pytest.fixture(scope="module")
def float64_reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("assign")
    return root, {name: run_assigner(name, "float64", str(root / "float64"), kinds=QUICK) for name in ASSIGNER_NAMES}


@pytest.mark.parametrize("name", ASSIGNER_NAMES)
def test_float64_twins_equal_each_other_and_the_reference_ties_included(float64_reports, name):
    root, summaries = float64_reports
    s = summaries[name]
    assert s["passed"], s["first_divergence"]
    folder = root / "float64" / "assigners" / name
    assert {p.name for p in folder.iterdir()} >= {"torch.npy", "paddle.npy", "numpy.npy", "diff.txt", "summary.json"}
    assert {c.split("/")[0] for c in s["cases"]} == set(QUICK)
    for case in s["cases"]:
        for out in OUTPUTS:
            key, rule = f"{case}/{out}", "exact" if out in DISCRETE else "float64"
            assert s["keys"][key]["rule"] == s["keys"][f"{key} vs numpy"]["rule"] == rule, key
    cases = s["cases"]
    # what each case is for happened: topk ties broken by the native rule, multi-GT anchors, no positive for the
    # GT between centres
    assert sum(c["topk_ties"] for n, c in cases.items() if n.startswith("ties/")) > 0
    assert all(c["multi_gt_anchors"] > 0 for n, c in cases.items() if n.startswith("overlap/"))
    assert all(c["tiny_gt_positives"] == 0 for n, c in cases.items() if n.startswith("tiny_gt/"))
    check = manifest.check_for(f"float64/assigners/{name}")
    assert check is not None and check.tool == "assign" and check.args == ("--assigner", name)
    assert check_keys(s, check.limits()) == []


def test_the_gate_rejudges_the_reports_and_gates_both_dtypes(float64_reports):
    root, _ = float64_reports
    assert gate(root)
    gated = {(c.dtype, c.args[-1]) for c in manifest.checks() if c.tool == "assign"}
    assert gated == {(d, n) for d in ("float64", "float32") for n in ASSIGNER_NAMES}


def _paddle_built(spec, build):
    """spec with the Paddle twin built by build() (a planted defect)."""
    return dataclasses.replace(spec, build=lambda fw: build() if fw == "paddle" else spec.build(fw))


def test_paddle_tal_with_beta_5_is_caught_and_named(tmp_path):
    from paddle_impl.assigners.task_aligned import TaskAlignedAssigner
    bad = _paddle_built(assign_runner.get_spec("tal"), lambda: TaskAlignedAssigner(num_classes=NUM_CLASSES, beta=5.0))
    s = run_assigner("tal", "float64", str(tmp_path), kinds=("single_gt",), spec=bad)
    failing = [k for k, v in s["keys"].items() if not v["passed"]]
    assert not s["passed"] and s["first_divergence"] == failing[0]
    assert {"single_gt/0/scores", "single_gt/0/scores vs numpy"} <= set(failing)
    row = s["keys"]["single_gt/0/scores vs numpy"]
    assert row["torch_max_rel"] <= 1e-9 < row["paddle_max_rel"]          # the row says which twin is off


def test_paddle_atss_without_the_inside_margin_is_caught_and_named(tmp_path, monkeypatch):
    """Anchor centres 5e-10 inside a GT's corners are outside by the 1e-9 margin (A.9 step 6)."""
    import paddle_impl.assigners.atss as patss
    inside = patss.paired_inside
    monkeypatch.setattr(patss, "paired_inside", lambda points, boxes, eps=1e-9: inside(points, boxes, 0.0))
    s = run_assigner("atss", "float64", str(tmp_path), kinds=("tiny_gt",))
    assert not s["passed"] and s["first_divergence"] == "tiny_gt/0/labels"
    row = s["keys"]["tiny_gt/0/mask_positive vs numpy"]
    assert not row["passed"] and row["torch_max_rel"] == 0 < row["paddle_max_rel"]


def test_a_float32_flip_no_rounding_explains_fails(tmp_path):
    """A Paddle twin that, in float32 only, drops one positive anchor far from every decision boundary."""
    spec = assign_runner.get_spec("atss")

    def dropping(assigner, t, case):
        out = [o.numpy() for o in spec.call(assigner, t, case)]
        if t["gt_bboxes"].dtype == paddle.float32:
            labels, _, scores, mask = out
            a = int(np.flatnonzero(labels[0] != NUM_CLASSES)[0])
            labels[0, a], scores[0, a], mask[0, :, a] = NUM_CLASSES, 0.0, 0.0
        return out
    s = run_assigner("atss", "float32", str(tmp_path), kinds=("single_gt",),
                     spec=dataclasses.replace(spec, call=dropping))
    assert not s["passed"] and s["first_divergence"] == "single_gt/0/labels"
    row = s["keys"]["single_gt/0/labels"]
    assert row["rule"] == "exact-events" and row["unexplained"] == 1
    assert s["cases"]["single_gt/0"]["flips"]["unexplained"] == 1
    assert s["keys"]["single_gt/0/labels vs numpy"]["passed"]                 # the float64 runs are fine


def test_flips_are_explained_only_at_near_boundary_decisions():
    spec = assign_runner.get_spec("tal")
    case = assign_runner.make_cases(np.random.default_rng(0), "tal", kinds=("single_gt",))[0]
    *_, info = spec.reference(case, assign_runner.paddle_topk)
    decisions = info["decisions"]
    t = assign_runner.run_side(frameworks.TORCH, spec, case, "float32")
    p = {k: v.copy() for k, v in t.items()}
    a = int(np.flatnonzero(t["labels"][0] != NUM_CLASSES)[0])
    p["labels"][0, a], p["mask_positive"][0, 0, a] = NUM_CLASSES, 0
    flips = assign_runner.explain_flips(spec, case, decisions, t, p)
    assert flips["anchors"] == flips["unexplained"] == 1 and flips["labels"][:2] == (1, 1)
    metric = decisions["metrics"][0, 0, a]
    decisions["topk_edge"][0, 0] = [metric, metric * (1 - 1e-7)]        # its metric ties at the topk boundary
    flips = assign_runner.explain_flips(spec, case, decisions, t, p)
    assert flips["unexplained"] == 0 and flips["explained"]["topk"] == 1 and flips["mask_positive"][:2] == (1, 0)


def test_float32_check_passes_with_its_flips_explained(tmp_path):
    """Seed 4's tied metrics: on some CPUs torch's and Paddle's float32 topk pick different tied anchors."""
    s = run_assigner("tal", "float32", str(tmp_path / "float32"), seed=4, kinds=("ties",))
    assert s["passed"], s["first_divergence"]
    for case in s["cases"].values():
        assert case.get("flips", {}).get("unexplained", 0) == 0
    assert check_keys(s, manifest.check_for("float32/assigners/tal").limits()) == []
    assert gate(tmp_path)


def test_cli_exit_status(tmp_path, monkeypatch, capsys):
    for argv, named in ((["--assigner", "yolo"], "--assigner"), ([], "--assigner"),
                        (["--assigner", "tal", "--dtype", "f16"], "--dtype")):
        with pytest.raises(SystemExit) as e:
            cli.main(["assign", *argv])
        assert e.value.code == 2 and named in capsys.readouterr().err
    one = OrderedDict((k, (1,) + v[1:]) for k, v in assign_runner.CASES.items() if k == "single_gt")
    monkeypatch.setattr(assign_runner, "CASES", one)
    assert cli.main(["assign", "--assigner", "tal", "--out", str(tmp_path / "ok")]) == 0
    assert "assign_diff tal float64: PASSED" in capsys.readouterr().out
    from paddle_impl.assigners.task_aligned import TaskAlignedAssigner
    bad = _paddle_built(assign_runner.get_spec("tal"), lambda: TaskAlignedAssigner(num_classes=NUM_CLASSES, beta=5.0))
    monkeypatch.setitem(assign_runner.SPECS, "tal", bad)
    assert cli.main(["assign", "--assigner", "tal", "--out", str(tmp_path / "bad")]) == 1
    assert (tmp_path / "bad" / "assigners" / "tal" / "summary.json").exists()
