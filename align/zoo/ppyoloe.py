"""PP-YOLOE family: s/m/l/x from one table of depth and width multipliers (torch_ref/detectors/ppyoloe.py and
its Paddle twin, PaddleDetection 2.6's names, so released ppyoloe_crn_*_300e_coco.pdparams load as they are).

Spec: ../shared/specs/ppyoloe.md. Forward alignment covers every module, the decoded scores and boxes and the
post-processed detections (PaddleDetection's multi-class NMS); --deploy aligns the RepVGG-folded twins.
Training (A.8-A.13): the criterion (grid anchors, ATSS for the first static_assigner_steps steps, then the
task-aligned assigner, varifocal + GIoU + DFL), Momentum with coupled L2 5e-4 (none on BatchNorm), linear
warm-up from 0 then cosine, no clipping, BatchNorm in training mode, and ModelEMA.
"""
import numpy as np

from align import frameworks
from align.detections import detector_outputs, selection_values
from align.seeded_init import seeded_init_torch, tensor_rng
from align.selections import DetectionView
from align.training import Recipe
from align.zoo import GatePlan, ModelSpec, TrainSpec, register

# scale: (depth_mult, width_mult), configs/ppyoloe/ppyoloe_crn_{s,m,l,x}_300e_coco.yml
SCALES = {"s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}
# multiples of 32, at least 96 px (ATSS needs 9 anchors on the stride-32 level), H != W to catch transposes
INPUT_SHAPE = (2, 3, 128, 160)


def _torch_ppyoloe(**kw):
    from torch_ref.detectors.ppyoloe import PPYOLOE
    return PPYOLOE(**kw)


def _paddle_ppyoloe(**kw):
    from paddle_impl.detectors.ppyoloe import PPYOLOE
    return PPYOLOE(**kw)


def detection_view(torch_model, shape):
    cfg = torch_model.nms_cfg
    return DetectionView(selection_values(), cfg["score_threshold"], cfg["nms_threshold"], cfg["keep_top_k"])


def seeded_init(model, seed=0):
    """Seeded weights everywhere but proj_conv, which keeps its fixed bin values (never trained)."""
    seeded_init_torch(model, seed)
    model.yolo_head.init_proj()
    return model


def deploy(model, dtype):
    """RepVGG deploy form, folded in float64 in the model's framework, then held in dtype."""
    fw = frameworks.of(model)
    fw.cast(model, "float64").convert_to_deploy()
    return fw.cast(model, dtype)


def predict(model, images, image_sizes):
    return model.predict(images, image_sizes=image_sizes)


def head_init(model, seed=0, std=0.01):
    """PaddleDetection's head init (A.7: class prior bias, box bias 1, ESE fc ~ N(0, 0.001)), except that the
    prediction convs get N(0, std) weights instead of zeros, drawn from the name-seeded generators: with zero
    weights nothing upstream of them has a gradient in the first steps, so backward would compare zeros."""
    import torch
    head = model.yolo_head
    head.init_weights()
    stds = {f"{kind}.{i}": std for kind in ("pred_cls", "pred_reg") for i in range(len(head.pred_cls))}
    stds.update({f"{kind}.{i}.fc": 0.001 for kind in ("stem_cls", "stem_reg") for i in range(len(head.stem_cls))})
    modules = dict(head.named_modules())
    with torch.no_grad():
        for name, w in stds.items():
            weight = modules[name].weight
            rng = tensor_rng(seed, f"yolo_head.{name}.weight")
            weight.copy_(torch.from_numpy(rng.normal(0.0, w, size=tuple(weight.shape))))
        for i in range(len(head.stem_cls)):
            head.stem_cls[i].fc.bias.zero_()
            head.stem_reg[i].fc.bias.zero_()
    return model


def no_decay(name):
    """BatchNorm weight and bias (L2Decay(0.0) in PaddleDetection's ConvBNLayer); everything else decays."""
    return ".bn." in name


def step_losses(model, loss, batch):
    """The criterion's dict: "loss" (1.0 cls + 2.5 iou + 0.5 dfl, back-propagated), the terms, L1 logged only."""
    cls_logits, reg_logits = model(batch["images"])
    return loss(cls_logits, reg_logits, batch["boxes"], batch["labels"])


def options(steps, given):
    """static_assigner_steps: ATSS for the first K steps, then task-aligned; by default half the run, so the
    switch happens inside it (PaddleDetection: static_assigner_epoch 100 of 300)."""
    k = given.pop("static_assigner_steps", steps // 2)
    if given:
        raise ValueError(f"unknown training options for PP-YOLOE: {', '.join(sorted(given))}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"static_assigner_steps must be an int >= 0, got {k!r}")
    return {"static_assigner_steps": k}


def before_step(loss, step, opts):
    """The assigner switch by step; logs which assigner ran (0 ATSS, 1 task-aligned)."""
    loss.use_static_assigner = step < opts["static_assigner_steps"]
    return {"assigner": 0.0 if loss.use_static_assigner else 1.0}


def _criterion(framework):
    def build(model, num_classes):
        if framework == "torch":
            from torch_ref.losses.ppyoloe_criterion import PPYOLOECriterion
        else:
            from paddle_impl.losses.ppyoloe_criterion import PPYOLOECriterion
        return PPYOLOECriterion(num_classes)
    return build


def _ema(framework):
    def build(model):
        if framework == "torch":
            from torch_ref.optim.ema import ModelEMA
        else:
            from paddle_impl.optim.ema import ModelEMA
        return ModelEMA(model, decay=0.9998, ema_black_list=("proj_conv.weight",))
    return build


# base 0.01 for 64 images scaled to 2 per step; warm-up from 0 over 3 steps, then the cosine to step 12 (the
# 300-of-360-epoch cosine's shape over a 10-step run); coupled L2 5e-4 with Paddle's float32 coefficients
RECIPE = Recipe(base_lr=0.01 * 2 / 64, momentum=float(np.float32(0.9)), weight_decay=float(np.float32(5e-4)),
                warmup_steps=3, warmup_ratio=0.0, decay_steps=(), clip_norm=None, schedule="cosine",
                cosine_steps=12)
TRAIN_NOTE = ("BatchNorm trains (batch statistics; Paddle's float32 momentum and epsilon and biased running "
              "variance on both sides, torch_ref/ops/paddle_semantics.py); EMA from zeros with the last-decay "
              "bias correction (ema_* statistics); assigner 0 ATSS, 1 task-aligned")
TRAIN = TrainSpec(_criterion("torch"), _criterion("paddle"), step_losses, RECIPE, no_decay, head_init, TRAIN_NOTE,
                  build_torch_ema=_ema("torch"), build_paddle_ema=_ema("paddle"), before_step=before_step,
                  options=options)

_FLOAT32_LIMIT = "float32 is gated on s and l (the same blocks at other widths and depths); CI time"
_BACKWARD_LIMIT = "backward is gated on ppyoloe_s (the same blocks at other widths and depths); CI time"
_TRAIN_LIMIT = "training and the metric are gated on ppyoloe_s (the same blocks at other widths and depths); CI time"
BOTH = ("float64", "float32")


def _gate(scale):
    """All four scales forward in float64; s and l in float32 (with the ISA reruns); s deployed, backward,
    trained and scored."""
    float32, small = scale in ("s", "l"), scale == "s"
    limits = {} if float32 else {"forward:float32": _FLOAT32_LIMIT}
    if not small:
        limits.update({"backward:float64": _BACKWARD_LIMIT, "backward:float32": _BACKWARD_LIMIT})
        limits.update({f"{level}:{dtype}": _TRAIN_LIMIT for level in ("train", "metric") for dtype in BOTH})
    return GatePlan(forward=BOTH if float32 else ("float64",), isa_reruns=float32, deploy=BOTH if small else (),
                    backward=BOTH if small else (), train=BOTH if small else (),
                    metric=BOTH if small else (), limits=limits)


for _scale, (_depth, _width) in SCALES.items():
    register(ModelSpec(
        f"ppyoloe_{_scale}", f"PP-YOLOE-{_scale} (CSPResNet, CustomCSPPAN, ET-head; depth {_depth}, width {_width})",
        _torch_ppyoloe, _paddle_ppyoloe, INPUT_SHAPE, kwargs={"depth_mult": _depth, "width_mult": _width},
        family="ppyoloe", outputs=detector_outputs, float64_view=detection_view, init=seeded_init, deploy=deploy,
        train=TRAIN, predict=predict, gate=_gate(_scale)))
