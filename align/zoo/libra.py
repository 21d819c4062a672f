"""Libra R-CNN family: Faster R-CNN R50-FPN 1x with BFP, IoU-balanced sampling and Balanced L1
(torch_ref/detectors/libra_rcnn.py and its Paddle twin, mmdetection 3.3's names, so its checkpoints load).

Spec: ../shared/specs/libra_rcnn.md. Forward alignment covers every module, the RPN outputs and anchors, the
proposals, the R-CNN outputs on them and the detections; backward and training run mmdetection's training step
(the losses/two_stage_criterion.py twins: RPN and R-CNN targets from the framework-free samplers, drawing from one
seeded generator per step); the metric scores the synthetic set.
"""
import numpy as np

from align.detections import rcnn_values, rpn_values, two_stage_outputs
from align.seeded_init import seeded_init_torch, tensor_rng
from align.selections import DetectionView, SelectionViews
from align.training import Recipe
from align.zoo import GatePlan, ModelSpec, TrainSpec, register

# multiples of 32; H != W to catch transposes
INPUT_SHAPE = (2, 3, 128, 160)


def _torch_libra(**kw):
    from torch_ref.detectors.libra_rcnn import LibraRCNN
    return LibraRCNN(**kw)


# mmdetection's head stds (B.3): the RPN convs 0.01, fc_cls 0.01, fc_reg 0.001, biases 0
HEAD_STDS = {"rpn_head.rpn_conv": 0.01, "rpn_head.rpn_cls": 0.01, "rpn_head.rpn_reg": 0.01,
             "roi_head.bbox_head.fc_cls": 0.01, "roi_head.bbox_head.fc_reg": 0.001}


def seeded_init(model, seed=0):
    """Seeded weights (align.seeded_init; NonLocal's conv_out random, not mmdetection's zeros, so BFP's refine is
    exercised), then the heads at mmdetection's stds from the name-seeded generators: with fan-in weights the
    box deltas are O(1), boxes blow up to the image and pile up on its border, and NMS decides ties there."""
    import torch
    seeded_init_torch(model, seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, std in HEAD_STDS.items():
            weight = modules[name].weight
            weight.copy_(torch.from_numpy(tensor_rng(seed, f"{name}.weight").normal(0.0, std, tuple(weight.shape))))
            modules[name].bias.zero_()
    return model


def detection_view(model, shape):
    """Float32 forward: the proposals (NMS 0.7 by level, no score threshold, top max_per_img) and the detections
    (score > score_thr, NMS per class, top max_per_img), each judged on its float64 view (align.selections)."""
    size = tuple(shape)[-2:]
    proposals, test = model.proposal_cfg, model.test_cfg
    return SelectionViews((
        DetectionView(rpn_values(size), float("-inf"), proposals["iou"], proposals["max_per_img"], "proposals"),
        DetectionView(rcnn_values(size, model.roi_head.bbox_head.bbox_coder.stds), test["score_thr"],
                      test["nms_iou"], test["max_per_img"])))


def float32_outputs(torch_model, inputs):
    """Float32 forward: every run's R-CNN on the proposals of torch's float64 run (each run's own proposals are
    still an output, judged by detection_view), so a proposal that float32 rounding flips does not change what
    the R-CNN stage is compared on."""
    import copy

    import torch
    model = copy.deepcopy(torch_model).double().eval()
    with torch.no_grad():
        res = model.forward_with_detections(torch.from_numpy(np.asarray(inputs["images"], np.float64)))
    return two_stage_outputs([p["anchor_index"].numpy() for p in res["proposals"]])


def predict(model, images, image_sizes):
    return model.predict(images, image_sizes=image_sizes)


def _paddle_libra(**kw):
    from paddle_impl.detectors.libra_rcnn import LibraRCNN
    return LibraRCNN(**kw)


def _criterion(framework, libra=True):
    def build(model, num_classes):
        from twin_common.samplers import CombinedSampler, RandomSampler
        if framework == "torch":
            from torch_ref.losses.two_stage_criterion import TwoStageCriterion
        else:
            from paddle_impl.losses.two_stage_criterion import TwoStageCriterion
        if libra:   # Libra's train_cfg: the RPN sampler with neg_pos_ub 5, the IoU-balanced CombinedSampler (B.1)
            return TwoStageCriterion(RandomSampler(256, 0.5, neg_pos_ub=5), CombinedSampler(512, 0.25))
        return TwoStageCriterion(RandomSampler(256, 0.5), RandomSampler(512, 0.25))      # Faster R-CNN's
    return build


def step_losses(model, loss, batch):
    """The criterion's dict ("loss" the sum of the RPN and R-CNN terms; acc and the RoI counts logged only)."""
    return loss(model, batch["images"], batch["boxes"], batch["labels"], [m["img_size"] for m in batch["metas"]])


def before_step(loss, step, options):
    """The samplers' generator of this step (twin_common.samplers.step_rng)."""
    loss.set_step(step)
    return {}


# B.8: SGD 0.02 for 16 images scaled to 2 per step, momentum 0.9 and weight decay 1e-4 on every parameter (Paddle's
# float32 coefficients), linear warm-up from 0.001x (over 3 steps here), x0.1 at step 8 (the 8-of-12-epoch shape),
# no clipping
RECIPE = Recipe(base_lr=0.02 * 2 / 16, momentum=float(np.float32(0.9)), weight_decay=float(np.float32(1e-4)),
                warmup_steps=3, warmup_ratio=0.001, decay_steps=(8,), clip_norm=None)
TRAIN_NOTE = ("backbone stem and layer1 frozen, every BatchNorm in eval mode (norm_eval); the samplers draw from "
              "step_rng(0, step) on both sides; state.floor_thr is the IoU-balanced sampler's floor (-1, then 0)")
TRAIN = TrainSpec(_criterion("torch"), _criterion("paddle"), step_losses, RECIPE, lambda name: False,
                  notes=TRAIN_NOTE, before_step=before_step)
FASTER_TRAIN = TrainSpec(_criterion("torch", libra=False), _criterion("paddle", libra=False), step_losses, RECIPE,
                         lambda name: False, notes=TRAIN_NOTE.split("; state.")[0], before_step=before_step)


def _torch_faster(**kw):
    from torch_ref.detectors.libra_rcnn import FasterRCNN
    return FasterRCNN(**kw)


def _paddle_faster(**kw):
    from paddle_impl.detectors.libra_rcnn import FasterRCNN
    return FasterRCNN(**kw)


_FLOAT32_LIMIT = ("float32: each side's R-CNN runs on its own proposals, which a float32 NMS flip changes; "
                  "forward replays torch's float64 proposals on every run, training does not yet")
_FASTER_LIMIT = "libra_rcnn's float32 forward, backward and training cover the same heads, samplers aside; CI time"
# NonLocal2d's phi bias adds theta_i . b to every logit of row i, which the softmax cancels: its gradient is zero
# up to rounding (5e-12 against 3.9e3 for phi's weight), judged as zero (align.backward.check_analytically_zero)
ZERO_GRADIENTS = {"neck.1.refine.phi.conv.bias": "NonLocal2d: theta_i . b_phi shifts every logit of row i alike, "
                                                 "and the softmax over the row cancels it"}
register(ModelSpec(
    "libra_rcnn", "Libra R-CNN: Faster R-CNN R50-FPN 1x + BFP (non-local refine) + IoU-balanced sampling + Balanced L1",
    _torch_libra, _paddle_libra, INPUT_SHAPE, family="libra", outputs=two_stage_outputs(),
    float64_view=detection_view, float32_outputs=float32_outputs,
    init=seeded_init, predict=predict, zero_gradients=ZERO_GRADIENTS, train=TRAIN,
    gate=GatePlan(forward=("float64", "float32"), isa_reruns=False, backward=("float64",), train=("float64",),
                  metric=("float64",),
                  limits={f"{level}:float32": _FLOAT32_LIMIT for level in ("backward", "train", "metric")})))
register(ModelSpec(
    "faster_rcnn_r50", "Faster R-CNN R50-FPN 1x (mmdetection's, what Libra R-CNN builds on: no BFP, random "
    "samplers, L1 box loss)", _torch_faster, _paddle_faster, INPUT_SHAPE, family="libra",
    outputs=two_stage_outputs(), float64_view=detection_view, float32_outputs=float32_outputs,
    init=seeded_init, predict=predict, train=FASTER_TRAIN,
    gate=GatePlan(forward=("float64",), isa_reruns=False, backward=(), metric=(),
                  limits={"forward:float32": _FASTER_LIMIT, "backward:float32": _FLOAT32_LIMIT,
                          "backward:float64": _FASTER_LIMIT, "train:float64": _FASTER_LIMIT})))
