"""loss_diff end to end: every loss and case in both dtypes against the other twin and the NumPy reference,
the report layout, the float32 bin-move rule, and twins broken on purpose making the report fail."""
import dataclasses
import json

import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
from reprod_log import ReprodDiffHelper

from align import loss_diff
from align.compare import check_float32_events
from align.loss_runner import load_spec, run_spec
from align.loss_specs.common import CASE_NAMES

MINE = ("focal", "ghmc", "ghmr", "smooth_l1", "balanced_l1", "varifocal", "giou", "dfl")
DTYPES = ("float64", "float32")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One `loss_diff.py --loss all` per dtype: {dtype: (exit status, report root)}."""
    out = {}
    for dtype in DTYPES:
        root = tmp_path_factory.mktemp(f"losses_{dtype}")
        out[dtype] = (loss_diff.main(["--loss", "all", "--dtype", dtype, "--out", str(root)]), root)
    return out


def _summary(root, name):
    return json.loads((root / "losses" / name / "summary.json").read_text())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MINE)
def test_every_loss_and_case_passes(reports, name, dtype):
    _, root = reports[dtype]
    summary = _summary(root, name)
    assert summary["passed"], summary["first_divergence"]
    expected = set(CASE_NAMES) | ({"momentum_steps"} if name.startswith("ghm") else set())
    assert expected <= set(summary["cases"])
    spec = load_spec(name)
    for case in spec.make_cases(np.random.default_rng(0)):
        prefix = case.name if len(case.steps) == 1 else f"{case.name}/step{len(case.steps) - 1}"
        for g in case.grad_wrt:                                     # every gradient is compared twice
            assert f"{prefix}/grad/{g}" in summary["keys"]
            assert summary["keys"][f"{prefix}/grad/{g} vs numpy"]["max_rel"] <= 1e-9
    for row, stats in summary["keys"].items():
        if row.endswith("vs numpy"):
            assert stats["max_rel"] <= 1e-9, row
        elif dtype == "float64":
            assert stats["max_rel"] <= 1e-9, row
    folder = root / "losses" / name
    assert {p.name for p in folder.iterdir()} >= {"torch.npy", "paddle.npy", "numpy.npy", "diff.txt", "summary.json"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_reprod_logs_and_aggregate(reports, dtype):
    status, root = reports[dtype]
    agg = json.loads((root / "losses" / "summary.json").read_text())
    assert set(MINE) <= set(agg["losses"])
    assert status == (0 if agg["passed"] else 1)
    assert all(agg["losses"][n]["passed"] for n in MINE)
    helper = ReprodDiffHelper()
    t = helper.load_info(str(root / "losses" / "dfl" / "torch.npy"))
    p = helper.load_info(str(root / "losses" / "dfl" / "paddle.npy"))
    assert set(t) == set(p) and "random/grad/pred_dist" in t


def test_ghm_bins_never_move_in_float64(reports):
    _, root = reports["float64"]
    for name in ("ghmc", "ghmr"):
        moves = _summary(root, name)["bin_moves"]
        counts = [v for case in moves.values() for step in case.values() for m in step.values() for v in m.values()]
        assert counts and not any(counts)
        assert _summary(root, name)["cases"]["momentum_steps"]["steps"] == 5
    env = _summary(root, "ghmc")["environment"]                 # versions and the GHM-C paths that ran
    assert env["paddle_ghmc"] == env["torch_ghmc"] == "fused CPU kernel"
    assert env["torch"] == torch.__version__ and env["paddle"] == paddle.__version__


def _only(spec, names):
    return dataclasses.replace(spec, make_cases=lambda rng: [c for c in spec.make_cases(rng) if c.name in names])


def test_broken_ghmc_edge_fails(monkeypatch, tmp_path):
    """Drop GHM-C's last-edge +1e-6 in the Paddle twin: g = 1 leaves every bin and the report fails."""
    import paddle_impl.losses.ghm as pghm
    monkeypatch.setattr(pghm, "float32_edges", lambda bins, last: paddle.arange(bins + 1, dtype="float32") / bins)
    summary = run_spec(_only(load_spec("ghmc"), ("bin_edges", "random")), "float64", str(tmp_path))
    assert not summary["passed"]
    assert summary["first_divergence"].startswith("bin_edges/")
    assert summary["cases"]["bin_edges"]["bin_moves"]["step0"]["bins10"]["torch_vs_paddle"] > 0
    assert summary["keys"]["random/loss/bins10"]["passed"]


def test_paddle_bce_kernel_would_fail(monkeypatch, tmp_path):
    """Paddle's own binary_cross_entropy_with_logits has the wrong gradient at logit 0: the runner sees it."""
    import paddle_impl.losses.focal as pfocal
    monkeypatch.setattr(pfocal, "bce_with_logits",
                        lambda x, t: PF.binary_cross_entropy_with_logits(x, t, reduction="none"))
    summary = run_spec(_only(load_spec("focal"), ("bin_edges",)), "float64", str(tmp_path))
    assert not summary["passed"] and summary["first_divergence"] == "bin_edges/grad/pred"


def test_detached_varifocal_weight_fails(monkeypatch, tmp_path):
    """PP-YOLOE lets the gradient flow through alpha p^gamma; a twin detaching it is caught in the gradient."""
    import paddle_impl.losses as plib
    from paddle_impl.losses.bce import bce_on_probabilities

    def detached(pred_score, gt_score, label, alpha=0.75, gamma=2.0):
        weight = alpha * pred_score.detach().pow(gamma) * (1 - label) + gt_score * label
        return (bce_on_probabilities(pred_score, gt_score) * weight).sum()

    monkeypatch.setattr(plib, "varifocal_loss", detached)
    summary = run_spec(_only(load_spec("varifocal"), ("random",)), "float64", str(tmp_path))
    assert summary["keys"]["random/loss/loss"]["passed"]
    assert not summary["keys"]["random/grad/pred_score"]["passed"]


def test_rebinned_rule():
    rng = np.random.default_rng(0)
    ref_t, ref_p = rng.normal(size=50), rng.normal(size=50)       # what each twin's own binning implies
    t32 = ref_t + rng.normal(0, 1e-7, 50)
    p32 = ref_p + rng.normal(0, 1e-7, 50)
    ev = {"moved_bins": 3}
    res = check_float32_events(t32, p32, ref_t, ref_p, ref_t, ref_t, ev)
    assert res["passed"] and res["rule"] == "float32-events" and res["events"] == ev and res["ratio"] <= 1
    assert not check_float32_events(t32, p32 + 1e-4, ref_t, ref_p, ref_t, ref_t, ev)["passed"]
    assert not check_float32_events(t32, p32, ref_t, ref_p, ref_t, ref_t + 1e-6, ev)["passed"]  # float64 differs


def test_moved_elements_must_sit_on_an_edge():
    spec = load_spec("ghmc")
    case = [c for c in spec.make_cases(np.random.default_rng(0)) if c.name == "bin_edges"][0]
    ref = spec.numpy_reference(case.steps, case.grad_wrt)[0]["diag"]
    explain = spec.extra["explain_diag"]
    on_edge = dict(ref)
    b = ref["bins10"].copy()
    i = int(np.flatnonzero(b == 3)[0])                              # g exactly on edge 3: may fall to bin 2
    b[i] = 2
    on_edge["bins10"] = b
    info = explain(case.steps, [ref], [on_edge])[0]["bins10"]
    assert info == {"moved": 1, "unexplained": 0, "max_edge_distance": 0.0}
    far = dict(ref)
    b = ref["bins10"].copy()
    b[i] = 0
    far["bins10"] = b
    assert explain(case.steps, [ref], [far])[0]["bins10"]["unexplained"] == 1
    ref_t = spec.extra["reference_with_diag"](case.steps, case.grad_wrt, [ref])[0]
    ref_p = spec.extra["reference_with_diag"](case.steps, case.grad_wrt, [on_edge])[0]
    assert not np.array_equal(ref_t["grads"]["pred"], ref_p["grads"]["pred"])   # the move changes weights


def test_cli_list_and_bad_arguments(capsys):
    assert loss_diff.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in MINE)
    with pytest.raises(SystemExit) as err:
        loss_diff.main(["--loss", "nope"])
    assert err.value.code == 2


def test_missing_spec_is_reported_not_failed(monkeypatch, tmp_path):
    """Before align/loss_specs/aploss.py exists: `--loss all` skips it, `--loss aploss` exits 2."""
    real = loss_diff.load_spec
    monkeypatch.setattr(loss_diff, "load_spec", lambda name: None if name == "aploss" else real(name))
    assert loss_diff.main(["--loss", "aploss", "--out", str(tmp_path)]) == 2
    verdicts, missing = loss_diff.run_all(("aploss", "giou"), "float64", str(tmp_path), 0)
    assert missing == ["aploss"] and verdicts["giou"]["passed"]
