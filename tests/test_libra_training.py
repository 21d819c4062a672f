"""Libra R-CNN's training step (losses/two_stage_criterion.py twins) against a float64 NumPy composition of the
reference pieces: NumPy MaxIoU assignment, the loop samplers (align/numpy_ref/samplers.py) drawing from the same
step generator, the NumPy RPN targets and losses, NumPy proposals, RoIAlign and box head. The twins must select
the same RoIs and give the same four losses; the IoU-balanced sampler's floor_thr is state that resumes."""
import numpy as np
import paddle
import pytest
import torch

from align.numpy_ref import libra_bbox_head as RB
from align.numpy_ref import rpn as R
from align.numpy_ref import samplers as S
from align.numpy_ref.max_iou import max_iou_assign
from align.zoo import build_twins, get_spec
from align.zoo.libra import _criterion
from twin_common.samplers import step_rng
from weights_convert.transfer import copy_torch_to_paddle, torch_state_numpy

NUM_CLASSES = 3
IMG_SHAPES = [(96, 128), (80, 110)]          # the second image is padded: some anchors are invalid
GTS = [np.array([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0], [30.0, 40.0, 50.0, 90.0]]),
       np.array([[5.0, 5.0, 40.0, 35.0], [50.0, 30.0, 100.0, 78.0]])]
LABELS = [np.array([0, 2, 1]), np.array([1, 1])]
TOL = 1e-10


@pytest.fixture(scope="module")
def twins():
    spec = get_spec("libra_rcnn")
    t, p = build_twins(spec, num_classes=NUM_CLASSES)
    spec.seeded_init(t, 0)
    copy_torch_to_paddle(t, p)
    t.double()
    p.to(dtype="float64")
    t.train()
    p.train()
    images = np.random.default_rng(3).normal(size=(2, 3, 96, 128))
    return t, p, images


def criterion_step(model, images, criterion, step=0, to_tensor=torch.tensor):
    """The losses (floats) of one criterion call at step, the batch made with to_tensor (torch or Paddle)."""
    criterion.set_step(step)
    gts = [to_tensor(g) for g in GTS]
    labels = [to_tensor(lab) for lab in LABELS]
    out = criterion(model, to_tensor(images), gts, labels, IMG_SHAPES)
    return {k: float(v) for k, v in out.items()}


def numpy_step(model, images, neg_sampler, step=0):
    """The step from NumPy pieces on the torch twin's BFP features (checked against NumPy in test_libra_neck)."""
    with torch.no_grad():
        feats = [f.numpy() for f in model.neck(model.backbone(torch.tensor(images)))]
    state = torch_state_numpy(model)
    head = {k[len("rpn_head."):]: v for k, v in state.items() if k.startswith("rpn_head.")}
    box = {k[len("roi_head.bbox_head."):]: v for k, v in state.items() if k.startswith("roi_head.bbox_head.")}
    rng = step_rng(0, step)
    sizes = [f.shape[-2:] for f in feats]
    anchors = R.grid_anchors(sizes)
    flat = np.concatenate(anchors)
    valid = [R.valid_flags(sizes, tuple(-(-s // 32) * 32 for s in shape)) for shape in IMG_SHAPES]
    gt_inds, pos, neg = [], [], []
    for v, gt in zip(valid, GTS):                       # every image's RPN sampling first (B.9)
        inds, _, _ = max_iou_assign(flat[np.concatenate(v)], gt, pos_iou_thr=0.7, neg_iou_thr=0.3,
                                    min_pos_iou=0.3, low_quality=True)
        p, n = S.random_sampler(list(inds), 256, 0.5, 5, rng)
        gt_inds.append(inds)
        pos.append(np.array(p, np.int64))
        neg.append(np.array(n, np.int64))
    cls, reg = R.head_forward(head, feats)
    losses, _ = R.loss(cls, reg, *R.get_targets(anchors, valid, GTS, gt_inds, pos, neg))
    proposals = R.predict_proposals(cls, reg, anchors, IMG_SHAPES, 2000, 1000, 0.7)
    rois, pos_priors, neg_priors, pos_gts, pos_labels = [], [], [], [], []
    for i, ((boxes, _, _), gt, lab) in enumerate(zip(proposals, GTS, LABELS)):
        inds, mo, _ = max_iou_assign(boxes, gt, pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, low_quality=False)
        inds = np.concatenate([np.arange(1, len(gt) + 1), inds])          # the gts as proposals, IoU 1
        mo = np.concatenate([np.ones(len(gt)), mo])
        p, n = S.combined_sampler(list(inds), mo, neg_sampler, rng)
        priors = np.concatenate([gt, boxes])
        p, n = np.array(p, np.int64), np.array(n, np.int64)
        pos_priors.append(priors[p])
        neg_priors.append(priors[n])
        pos_gts.append(gt[inds[p] - 1])
        pos_labels.append(lab[inds[p] - 1])
        chosen = np.concatenate([priors[p], priors[n]])
        rois.append(np.concatenate([np.full((len(chosen), 1), float(i)), chosen], axis=1))
    rois = np.concatenate(rois)
    cls_score, bbox_pred = RB.head_forward(box, RB.extract_roi_feats(feats[:4], rois))
    targets = RB.get_targets(pos_priors, neg_priors, pos_gts, pos_labels, num_classes=NUM_CLASSES)
    rcnn, _ = RB.loss(cls_score, bbox_pred, *targets, num_classes=NUM_CLASSES)
    losses.update(rcnn)
    losses["num_rois"], losses["num_pos_rois"] = float(len(rois)), float(sum(len(x) for x in pos_priors))
    return losses


def test_training_step_matches_the_numpy_composition(twins):
    t, p, images = twins
    neg_sampler = S.IoUBalancedNeg()
    t_crit, p_crit = _criterion("torch")(t, NUM_CLASSES).double(), _criterion("paddle")(p, NUM_CLASSES)
    p_crit.to(dtype="float64")
    for step in (0, 1):                     # step 1: floor_thr is 0 now, zero-IoU negatives become the floor
        ref = numpy_step(t, images, neg_sampler, step)
        got = {"torch": criterion_step(t, images, t_crit, step),
               "paddle": criterion_step(p, images, p_crit, step, paddle.to_tensor)}
        assert ref["num_pos_rois"] > 0 and ref["num_rois"] > ref["num_pos_rois"]
        for side, out in got.items():
            assert out["num_rois"] == ref["num_rois"] and out["num_pos_rois"] == ref["num_pos_rois"], side
            for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "acc"):
                assert abs(out[k] - ref[k]) <= TOL * max(abs(ref[k]), 1e-3), (side, step, k, out[k], ref[k])
            total = sum(ref[k] for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"))
            assert abs(out["loss"] - total) <= TOL * total
        assert float(t_crit.floor_thr) == float(p_crit.floor_thr) == neg_sampler.floor_thr == 0


def test_floor_thr_is_state_that_resumes(twins):
    """A criterion rebuilt from a saved state (floor_thr 0) samples as the one that kept going; a fresh one
    (floor_thr -1) does not: the floor is part of what training compares and resumes."""
    t, _, images = twins
    going = _criterion("torch")(t, NUM_CLASSES).double()
    criterion_step(t, images, going, 0)
    saved = {k: v.clone() for k, v in going.state_dict().items()}
    assert float(saved["floor_thr"]) == 0.0
    resumed, fresh = (_criterion("torch")(t, NUM_CLASSES).double() for _ in range(2))
    resumed.load_state_dict(saved)
    assert float(fresh.floor_thr) == -1.0
    a, b, c = (criterion_step(t, images, crit, 1) for crit in (going, resumed, fresh))
    assert a == b
    assert a["loss_cls"] != c["loss_cls"]
