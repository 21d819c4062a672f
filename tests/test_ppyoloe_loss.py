"""PP-YOLOE's detection loss twins (../shared/specs/ppyoloe.md A.5, A.7, A.11): torch == Paddle == the float64
NumPy reference on seeded assignments for a 96x128 image, gradients through flatten + decode + loss, the
not-detached VFL weight, the no-positive branch, float32, and the closed form at PaddleDetection's init."""
import math

import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as TF

from align import frameworks
from align.numpy_ref import ppyoloe_loss as ref
from align.numpy_ref.giou import giou_loss
from align.numpy_ref.varifocal import varifocal_loss as ref_vfl
from paddle_impl.heads.ppyoloe_head import PPYOLOEHead as PHead
from paddle_impl.losses.dfl import distribution_focal_loss as p_dfl
from paddle_impl.losses.ppyoloe_loss import PPYOLOELoss as PLoss
from torch_ref.heads.ppyoloe_head import PPYOLOEHead as THead
from torch_ref.losses.bce import bce_on_probabilities
from torch_ref.losses.dfl import distribution_focal_loss as t_dfl
from torch_ref.losses.ppyoloe_loss import PPYOLOELoss as TLoss
from torch_ref.priors.grid_cells import generate_anchors_for_grid_cell

SIZES, STRIDES = [(3, 4), (6, 8), (12, 16)], (32, 16, 8)        # a 96x128 image: L = 12 + 48 + 192 = 252
B, C, BINS = 2, 80, 17
KEYS = ("loss", "loss_cls", "loss_iou", "loss_dfl", "loss_l1")


def anchors():
    """Anchor points (L, 2) in pixels and strides (L, 1), float64."""
    _, points, _, strides = generate_anchors_for_grid_cell(SIZES, STRIDES, dtype=torch.float64)
    return points.numpy(), strides.numpy()


def make_case(seed, positive_rate=0.1):
    """Logits per level and an assignment: ~10% positives with a box around their anchor (some wider than
    16 cells or off the anchor, so the DFL clip bites at both ends) and one score in (0, 1] on their label."""
    rng = np.random.default_rng(seed)
    points, strides = anchors()
    n = len(points)
    cls = [rng.normal(0, 2, (B, C, h, w)) for h, w in SIZES]
    reg = [rng.normal(0, 2, (B, 4 * BINS, h, w)) for h, w in SIZES]
    centre = points + rng.normal(0, 1.0, (B, n, 2)) * strides
    half = rng.uniform(0.3, 18, (B, n, 2)) * strides
    bboxes = np.concatenate([centre - half, centre + half], -1)
    labels = np.full((B, n), C, dtype=np.int64)
    pos = rng.random((B, n)) < positive_rate
    pos[:, [0, 12, 60]] = True                                   # every level has positives
    labels[pos] = rng.integers(0, C, pos.sum())
    scores = np.zeros((B, n, C))
    scores[pos, labels[pos]] = 1.0 - rng.random(pos.sum())       # in (0, 1]
    scores[np.nonzero(pos)[0][0], np.nonzero(pos)[1][0], labels[pos][0]] = 1.0
    return {"cls": cls, "reg": reg, "points": points, "strides": strides, "labels": labels, "bboxes": bboxes,
            "scores": scores}


def no_positive_case(seed):
    case = make_case(seed)
    case["labels"][:] = C
    case["scores"][:] = 0.0
    return case


def run_loss(framework, case, dtype="float64", logits=None):
    """flatten + decode + loss in 'torch' or 'paddle'; logits: (cls, reg) leaf tensors to differentiate (made here
    when None). Returns (loss dict, pred_scores, pred_bboxes)."""
    fw = frameworks.get(framework)
    cls, reg = logits or ([fw.tensor(c, dtype) for c in case["cls"]], [fw.tensor(r, dtype) for r in case["reg"]])
    loss_fn = TLoss() if framework == "torch" else PLoss()
    scores, distri = loss_fn.flatten(cls, reg)
    points = fw.tensor(case["points"] / case["strides"], dtype)
    bboxes = loss_fn.decode(points, distri)
    out = loss_fn(scores, distri, bboxes, points, fw.tensor(case["labels"]), fw.tensor(case["bboxes"], dtype),
                  fw.tensor(case["scores"], dtype), fw.tensor(case["strides"], dtype))
    return out, scores, bboxes


def run_torch(case, dtype="float64", logits=None):
    return run_loss("torch", case, dtype, logits)


def run_paddle(case, dtype="float64", logits=None):
    return run_loss("paddle", case, dtype, logits)


def run_numpy(case):
    scores, distri = ref.flatten(case["cls"], case["reg"])
    points = case["points"] / case["strides"]
    bboxes = ref.decode(points, distri)
    out = ref.ppyoloe_loss(scores, distri, bboxes, points, case["labels"], case["bboxes"], case["scores"],
                           case["strides"])
    return out, scores, bboxes


def values(out):
    return {k: float(out[k].detach()) for k in KEYS}


def assert_rel(a, b, rtol):
    for k in KEYS:
        assert abs(a[k] - b[k]) <= rtol * abs(b[k]), (k, a[k], b[k])


def leaves_torch(case, dtype="float64"):
    return ([torch.tensor(c.astype(dtype), requires_grad=True) for c in case["cls"]],
            [torch.tensor(r.astype(dtype), requires_grad=True) for r in case["reg"]])


def leaves_paddle(case, dtype="float64"):
    return ([paddle.to_tensor(c.astype(dtype), stop_gradient=False) for c in case["cls"]],
            [paddle.to_tensor(r.astype(dtype), stop_gradient=False) for r in case["reg"]])


def test_case_shape():
    case = make_case(0)
    n_pos = int((case["labels"] != C).sum())
    assert case["points"].shape == (252, 2) and 30 <= n_pos <= 80
    out = run_numpy(case)[0]
    assert all(math.isfinite(v) and v > 0 for v in out.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_torch_paddle_numpy_float64(seed):
    case = make_case(seed)
    ref_out, ref_scores, ref_boxes = run_numpy(case)
    t_out, t_scores, t_boxes = run_torch(case)
    p_out, p_scores, p_boxes = run_paddle(case)
    for scores, boxes in ((t_scores, t_boxes), (p_scores, p_boxes)):
        np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-12, atol=0)
        np.testing.assert_allclose(boxes.numpy(), ref_boxes, rtol=1e-12, atol=1e-12)
    assert_rel(values(t_out), ref_out, 1e-12)
    assert_rel(values(p_out), ref_out, 1e-12)
    assert_rel(values(t_out), values(p_out), 1e-12)
    # total = 1.0 cls + 2.5 iou + 0.5 dfl; L1 is logged only
    expected = ref_out["loss_cls"] + 2.5 * ref_out["loss_iou"] + 0.5 * ref_out["loss_dfl"]
    assert ref_out["loss"] == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("seed", [0, 3])
def test_gradients_torch_vs_paddle_float64(seed):
    case = make_case(seed)
    t_cls, t_reg = leaves_torch(case)
    p_cls, p_reg = leaves_paddle(case)
    run_torch(case, logits=(t_cls, t_reg))[0]["loss"].backward()
    run_paddle(case, logits=(p_cls, p_reg))[0]["loss"].backward()
    for t, p in zip(t_cls + t_reg, p_cls + p_reg):
        tg, pg = t.grad.numpy(), p.grad.numpy()
        assert np.abs(tg).max() > 0
        assert np.abs(tg - pg).max() <= 1e-10 * np.abs(tg).max()


def test_vfl_weight_is_not_detached():
    """d loss_cls / d p includes d w / d p (Paddle's BCE differentiates its weight): the NumPy analytic gradient
    of the non-detached form matches, and a detached weight moves the class-logit gradient far beyond tolerance."""
    case = make_case(4)
    t_cls, t_reg = leaves_torch(case)
    out, scores, _ = run_torch(case, logits=(t_cls, t_reg))
    scores.retain_grad()
    out["loss_cls"].backward(retain_graph=True)
    q = torch.tensor(case["scores"])
    s = max(case["scores"].sum(), 1.0)
    one_hot = (case["labels"][..., None] == np.arange(C)).astype(np.float64)
    analytic = ref_vfl(scores.detach().numpy(), case["scores"], one_hot)[1]["pred_score"] / s
    np.testing.assert_allclose(scores.grad.numpy(), analytic, rtol=1e-12, atol=1e-15)
    kept = [c.grad.clone() for c in t_cls]
    for c in t_cls:
        c.grad = None
    y = torch.tensor(one_hot)
    w_detached = 0.75 * scores.detach() ** 2 * (1 - y) + q * y
    ((bce_on_probabilities(scores, q) * w_detached).sum() / s).backward()
    worst = max(float((a - c.grad).abs().max() / a.abs().max()) for a, c in zip(kept, t_cls))
    assert worst > 1e-2


def test_no_positive_branch():
    case = no_positive_case(5)
    ref_out = run_numpy(case)[0]
    assert ref_out["loss_iou"] == ref_out["loss_l1"] == ref_out["loss_dfl"] == 0.0
    t_cls, t_reg = leaves_torch(case)
    p_cls, p_reg = leaves_paddle(case)
    t_out = run_torch(case, logits=(t_cls, t_reg))[0]
    p_out = run_paddle(case, logits=(p_cls, p_reg))[0]
    for out in (t_out, p_out):
        got = values(out)
        assert [got[k] for k in ("loss_iou", "loss_l1", "loss_dfl")] == [0.0, 0.0, 0.0]
        assert got["loss_cls"] == pytest.approx(ref_out["loss_cls"], rel=1e-12)
        assert got["loss"] == pytest.approx(ref_out["loss_cls"], rel=1e-12)     # S = max(0, 1) = 1
    t_out["loss"].backward()
    p_out["loss"].backward()
    # 0 * sum(pred_dist) keeps the bins in the graph: their gradient exists and is exactly zero
    for t, p in zip(t_reg, p_reg):
        assert t.grad is not None and p.grad is not None
        assert not t.grad.numpy().any() and not p.grad.numpy().any()
    for t, p in zip(t_cls, p_cls):
        assert np.abs(t.grad.numpy() - p.grad.numpy()).max() <= 1e-10 * np.abs(t.grad.numpy()).max()


@pytest.mark.parametrize("seed", [0, 6])
def test_values_float32(seed):
    case = make_case(seed)
    t_out, p_out = run_torch(case, "float32")[0], run_paddle(case, "float32")[0]
    assert t_out["loss"].dtype == torch.float32 and p_out["loss"].dtype == paddle.float32
    assert_rel(values(t_out), values(p_out), 1e-5)
    assert_rel(values(t_out), run_numpy(case)[0], 1e-5)


def test_reused_dfl_is_the_frameworks_cross_entropy():
    """_df_loss calls F.cross_entropy (class axis last in Paddle, dim 1 in torch, A.14 #11); the reused
    distribution_focal_loss (log_softmax + gather) gives the same per-row means."""
    rng = np.random.default_rng(7)
    dist, target = rng.normal(0, 3, (40, 4, BINS)), np.clip(rng.uniform(-1, 17, (40, 4)), 0, 15.99)
    left = np.floor(target).astype(np.int64)
    w_left = (left + 1) - target
    td, tl = torch.tensor(dist), torch.tensor(left)
    ce_t = (TF.cross_entropy(td.permute(0, 2, 1), tl, reduction="none") * torch.tensor(w_left)
            + TF.cross_entropy(td.permute(0, 2, 1), tl + 1, reduction="none") * torch.tensor(1 - w_left)).mean(-1)
    pd, pl = paddle.to_tensor(dist), paddle.to_tensor(left)
    ce_p = (PF.cross_entropy(pd, pl, reduction="none") * paddle.to_tensor(w_left)
            + PF.cross_entropy(pd, pl + 1, reduction="none") * paddle.to_tensor(1 - w_left)).mean(-1)
    ours_t = t_dfl(td, torch.tensor(target)).squeeze(-1).numpy()
    ours_p = p_dfl(pd, paddle.to_tensor(target)).squeeze(-1).numpy()
    for a, b in ((ours_t, ce_t.numpy()), (ours_p, ce_p.numpy()), (ours_t, ours_p)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def _init_heads():
    in_channels = (24, 16, 8)
    t = THead(in_channels).double().eval()
    p = PHead(in_channels)
    p.to(dtype="float64")
    p.eval()
    return in_channels, t, p


def test_closed_form_at_paddledetection_init():
    """A.7: at init every score is sigmoid(bias) ≈ 0.01 and every distance is 8 cells, whatever the features, so
    the losses depend on the targets only: loss_dfl = log 17 (uniform bins), loss_cls and loss_iou have closed
    forms, and torch == Paddle."""
    in_channels, t_head, p_head = _init_heads()
    case = make_case(8)
    results = []
    for seed in (10, 11):
        rng = np.random.default_rng(seed)
        feats = [rng.normal(0, 3, (B, c, h, w)) for c, (h, w) in zip(in_channels, SIZES)]
        with torch.no_grad():
            t_cls, t_reg = t_head([torch.tensor(f) for f in feats])
        p_cls, p_reg = p_head([paddle.to_tensor(f) for f in feats])
        t_out = values(run_torch(case, logits=(t_cls, t_reg))[0])
        p_out = values(run_paddle(case, logits=(p_cls, p_reg))[0])
        assert_rel(t_out, p_out, 1e-12)
        results.append(t_out)
    assert results[0] == results[1]                                   # bit-identical across features
    bias = float(t_head.pred_cls[0].bias[0].detach())
    assert bias == pytest.approx(-4.59511985013459, rel=1e-7)
    s = 1 / (1 + math.exp(-bias))
    labels, q = case["labels"], case["scores"]
    pos = labels != C
    q_pos = q[pos, labels[pos]]
    total = max(q.sum(), 1.0)
    neg_terms = (B * len(labels[0]) * C - pos.sum()) * 0.75 * s ** 2 * -math.log(1 - s)
    pos_terms = (q_pos * -(q_pos * math.log(s) + (1 - q_pos) * math.log(1 - s))).sum()
    points = np.broadcast_to(case["points"] / case["strides"], (B, len(labels[0]), 2))[pos]
    pred = np.concatenate([points - 8, points + 8], -1)
    gt = (case["bboxes"] / case["strides"])[pos]
    out = results[0]
    assert out["loss_dfl"] == pytest.approx(math.log(BINS), rel=1e-12)
    assert out["loss_cls"] == pytest.approx((neg_terms + pos_terms) / total, rel=1e-12)
    assert out["loss_iou"] == pytest.approx(giou_loss(pred, gt, reduction="sum", weight=q_pos)[0] / total, rel=1e-12)
    assert out["loss_l1"] == pytest.approx(np.abs(pred - gt).mean(), rel=1e-12)
