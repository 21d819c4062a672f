"""RetinaNet family: RetinaNet-R50-FPN (torch_ref/detectors/retinanet.py and its Paddle twin), its two necks,
and its three training variants (Focal, GHM-C + GHM-R, AP-Loss), all with RetinaNet's recipe."""
import math

from align.detections import delta_values, detector_outputs
from align.seeded_init import tensor_rng
from align.selections import DetectionView
from align.training import Recipe
from align.zoo import GatePlan, ModelSpec, TrainSpec, register


def _torch_retina(**kw):
    from torch_ref.detectors.retinanet import RetinaNet
    return RetinaNet(**kw)


def _paddle_retina(**kw):
    from paddle_impl.detectors.retinanet import RetinaNet
    return RetinaNet(**kw)


def detection_view(torch_model, shape):
    coder, m = torch_model.box_coder, torch_model
    return DetectionView(delta_values(tuple(shape)[-2:], coder.means, coder.stds), m.score_thresh, m.nms_thresh,
                         m.detections_per_img)


def predict(model, images, image_sizes):
    return model.predict(images, image_sizes=image_sizes)


def no_decay(name):
    """Biases and normalisation parameters (mmdetection's usual no-decay set, by ResNet/FPN names)."""
    return name.endswith(".bias") or ".bn" in name or "downsample.1" in name or name.startswith("bn")


def head_init(model, seed=0, std=0.01, prior_prob=0.01):
    """RetinaNet's own head initialisation (normal std 0.01, zero biases, classification prior), drawn from
    the name-seeded NumPy generators (align.seeded_init). Training checks start from it: a head initialised
    like the backbone starts with a loss of ~60 and chaotic first steps that amplify float64 rounding."""
    import torch
    from torch import nn
    with torch.no_grad():
        for name, m in model.bbox_head.named_modules():
            if isinstance(m, nn.Conv2d):
                full = f"bbox_head.{name}.weight"
                m.weight.copy_(torch.from_numpy(tensor_rng(seed, full).normal(0.0, std, size=tuple(m.weight.shape))))
                m.bias.zero_()
        model.bbox_head.retina_cls.bias.fill_(-math.log((1 - prior_prob) / prior_prob))
    return model


def step_losses(model, loss, batch):
    """Loss terms of one batch; the twins share their call signatures, so one function serves both."""
    cls, reg = model(batch["images"])
    anchors = model.anchors(batch["images"], cls)
    return loss(cls, reg, anchors, batch["boxes"], batch["labels"])


BN_NOTE = ("BatchNorm uses frozen running statistics (norm_eval=True, RetinaNet's setting): Paddle's biased "
           "and torch's unbiased running-variance updates never run, so they cannot cause a difference.")


def _training(loss_type):
    def build_torch_loss(model, num_classes):
        from torch_ref.losses.retina_loss import RetinaLoss
        return RetinaLoss(num_classes, model.box_coder, loss_type)

    def build_paddle_loss(model, num_classes):
        from paddle_impl.losses.retina_loss import RetinaLoss
        return RetinaLoss(num_classes, model.box_coder, loss_type)
    return TrainSpec(build_torch_loss, build_paddle_loss, step_losses, Recipe(), no_decay, head_init, BN_NOTE)


def _spec(name, description, kwargs=None, train=None, gate=GatePlan(), metric=False):
    return register(ModelSpec(name, description, _torch_retina, _paddle_retina, (2, 3, 120, 152),
                              kwargs=kwargs or {}, family="retinanet", outputs=detector_outputs,
                              float64_view=detection_view, train=train, predict=predict if metric else None,
                              gate=gate))


# H and W of the default inputs are deliberately not multiples of 32: odd feature sizes exercise FPN's
# size-based upsampling.
_NO_FORWARD = dict(forward=(), isa_reruns=False)
_TRAIN_FLOAT32_LIMIT = ("train_diff does not replay float32's ReLU decisions yet (backward_diff does), and the "
                        "first step's gradient norm carries those flips (README, known limits)")
_spec("retina_r50", "RetinaNet-R50-FPN, P6 from C5, no ReLU before P7 (mmdetection/GHM); Focal loss",
      train=_training("focal"), metric=True,
      gate=GatePlan(train=("float64", "float32"), metric=("float64", "float32")))
_spec("retina_r50_tv", "RetinaNet-R50-FPN, torchvision v1 neck: P6 from P5, ReLU before P7",
      kwargs={"extra_from": "p5", "relu_before_p7": True}, metric=True, gate=GatePlan(backward=()))
_spec("retina_r50_ghm", "RetinaNet-R50-FPN trained with GHM-C + GHM-R (training checks)",
      train=_training("ghm"), gate=GatePlan(**_NO_FORWARD, train=("float64", "float32")))
_spec("retina_r50_aploss", "RetinaNet-R50-FPN trained with AP-Loss, 2 scales per octave (training checks)",
      kwargs={"anchor_cfg": {"scales_per_octave": 2, "center_offset": 0.5}}, train=_training("aploss"),
      gate=GatePlan(**_NO_FORWARD, train=("float64",), limits={"train:float32": _TRAIN_FLOAT32_LIMIT}))
