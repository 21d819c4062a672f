"""PP-YOLOE's training loss end to end (grid anchors, ATSS or task-aligned assignment, PPYOLOELoss) on the twins:
torch and Paddle agree in float64 on every loss term and every parameter gradient, BatchNorm in training mode."""
import numpy as np
import pytest

from align import frameworks
from align.zoo import build_models, get_spec
from paddle_impl.losses.ppyoloe_criterion import PPYOLOECriterion as PCriterion
from torch_ref.losses.ppyoloe_criterion import PPYOLOECriterion as TCriterion

BOXES = [np.array([[10.0, 20.0, 60.0, 90.0], [40.0, 30.0, 120.0, 110.5], [44.0, 28.0, 118.0, 100.0]]),
         np.array([[5.0, 5.0, 50.0, 40.0]])]
LABELS = [np.array([1, 3, 3]), np.array([0])]


@pytest.fixture(scope="module")
def twins():
    t, p = build_models(get_spec("ppyoloe_s"), seed=0, num_classes=5)
    t.double().train()
    p.to(dtype="float64")
    p.train()
    return t, p


def _step(model, criterion, x, boxes, labels):
    fw = frameworks.of(model)
    fw.zero_grad(model)
    losses = criterion(*model(fw.tensor(x)), [fw.tensor(b) for b in boxes], [fw.tensor(v) for v in labels])
    fw.backward(losses["loss"])
    return {k: float(fw.to_numpy(v)) for k, v in losses.items()}, fw.grads(model)


@pytest.mark.parametrize("static", [True, False], ids=["atss", "task_aligned"])
def test_losses_and_gradients_agree_in_float64(twins, static):
    t, p = twins
    x = np.random.default_rng(0).normal(size=(2, 3, 128, 160))
    tc, pc = TCriterion(5), PCriterion(5)
    tc.use_static_assigner = pc.use_static_assigner = static
    lt, gt = _step(t, tc, x, BOXES, LABELS)
    lp, gp = _step(p, pc, x, BOXES, LABELS)
    assert set(lt) == {"loss", "loss_cls", "loss_iou", "loss_dfl", "loss_l1"}
    for k in lt:
        assert abs(lt[k] - lp[k]) <= 1e-12 * abs(lt[k]), k
    assert lt["loss_iou"] > 0 and lt["loss_dfl"] > 0                     # positives were assigned
    assert set(gt) == set(gp) and "yolo_head.proj_conv.weight" not in gt   # never trained
    for k in gt:
        scale = np.abs(gt[k]).max()
        assert np.abs(gt[k] - gp[k]).max() <= 1e-9 * scale, k


def test_a_batch_without_ground_truth_is_all_background(twins):
    t, p = twins
    x = np.random.default_rng(1).normal(size=(2, 3, 96, 128))
    empty = [np.zeros((0, 4)), np.zeros((0, 4))]
    lt, _ = _step(t, TCriterion(5), x, empty, [np.zeros(0, np.int64)] * 2)
    lp, _ = _step(p, PCriterion(5), x, empty, [np.zeros(0, np.int64)] * 2)
    assert lt["loss_iou"] == lt["loss_l1"] == lt["loss_dfl"] == 0.0 and lt["loss_cls"] > 0
    assert abs(lt["loss"] - lp["loss"]) <= 1e-12 * lt["loss"]
