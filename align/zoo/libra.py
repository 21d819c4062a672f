"""Libra R-CNN family: Faster R-CNN R50-FPN 1x with BFP, IoU-balanced sampling and Balanced L1
(torch_ref/detectors/libra_rcnn.py and its Paddle twin, mmdetection 3.3's names, so its checkpoints load).

Spec: ../shared/specs/libra_rcnn.md. Forward alignment covers every module, the RPN outputs and anchors, the
proposals, the R-CNN outputs on them and the detections; backward (seeded projection) and the metric run too.
Training alignment (samplers, targets, losses) is not wired in yet (issue "Libra R-CNN mirrored and aligned at
every level").
"""
from align.detections import detector_outputs
from align.seeded_init import seeded_init_torch, tensor_rng
from align.zoo import GatePlan, ModelSpec, register

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


def predict(model, images, image_sizes):
    return model.predict(images, image_sizes=image_sizes)


def _paddle_libra(**kw):
    from paddle_impl.detectors.libra_rcnn import LibraRCNN
    return LibraRCNN(**kw)


_FLOAT32_LIMIT = ("float32: each side's R-CNN runs on its own proposals, which a float32 NMS flip changes; "
                  "replaying one side's proposals on both is not done yet")
# NonLocal2d's phi bias adds theta_i . b to every logit of row i, which the softmax cancels: its gradient is zero
# up to rounding (5e-12 against 3.9e3 for phi's weight), judged as zero (align.backward.check_analytically_zero)
ZERO_GRADIENTS = {"neck.1.refine.phi.conv.bias": "NonLocal2d: theta_i . b_phi shifts every logit of row i alike, "
                                                 "and the softmax over the row cancels it"}
register(ModelSpec(
    "libra_rcnn", "Libra R-CNN: Faster R-CNN R50-FPN 1x + BFP (non-local refine) + IoU-balanced sampling + Balanced L1",
    _torch_libra, _paddle_libra, INPUT_SHAPE, family="libra", outputs=detector_outputs,
    init=seeded_init, predict=predict, zero_gradients=ZERO_GRADIENTS,
    gate=GatePlan(forward=("float64",), isa_reruns=False, backward=("float64",), metric=("float64",),
                  limits={"forward:float32": _FLOAT32_LIMIT, "backward:float32": _FLOAT32_LIMIT})))
