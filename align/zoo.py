"""The models the tools know by name: how to build each twin and what to feed it.

Every entry builds the torch model and its Paddle twin with the same configuration; weights_convert uses
the pair to know the expected keys and shapes, forward_diff to run both.
"""
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ModelSpec:
    name: str
    description: str
    build_torch: Callable
    build_paddle: Callable
    input_shape: tuple                       # (N, 3, H, W) fed by forward_diff
    outputs: str = "logits"                  # 'logits' or 'detector': what forward_diff records beyond hooks
    kwargs: dict = field(default_factory=dict)


def _torch_resnet50(**kw):
    from torch_ref.models.resnet import resnet50
    return resnet50(**kw)


def _paddle_resnet50(**kw):
    from paddle_impl.models.resnet import resnet50
    return resnet50(**kw)


def _torch_retina(**kw):
    from torch_ref.models.retinanet import RetinaNet
    return RetinaNet(**kw)


def _paddle_retina(**kw):
    from paddle_impl.models.retinanet import RetinaNet
    return RetinaNet(**kw)


# H and W are deliberately not multiples of 32: odd feature sizes exercise FPN's size-based upsampling.
MODELS = {
    "resnet50": ModelSpec("resnet50", "torchvision-compatible ResNet-50 classifier (1000 classes)",
                          _torch_resnet50, _paddle_resnet50, (2, 3, 112, 144)),
    "retina_r50": ModelSpec("retina_r50", "RetinaNet-R50-FPN, P6 from C5, no ReLU before P7 (mmdetection/GHM)",
                            _torch_retina, _paddle_retina, (2, 3, 120, 152), outputs="detector"),
    "retina_r50_tv": ModelSpec("retina_r50_tv", "RetinaNet-R50-FPN, torchvision v1 neck: P6 from P5, ReLU before P7",
                               _torch_retina, _paddle_retina, (2, 3, 120, 152), outputs="detector",
                               kwargs={"extra_from": "p5", "relu_before_p7": True}),
}


def get_spec(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_pair(name):
    spec = get_spec(name)
    return spec.build_torch(**spec.kwargs), spec.build_paddle(**spec.kwargs)
