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


def build_models(spec, weights=None, seed=0):
    """The torch model (seeded init or a torch checkpoint) and its Paddle twin holding the same weights."""
    import torch
    from align.seeded_init import seeded_init_torch
    from weights_convert.checkpoint_io import load_torch
    from weights_convert.convert import check_keys, layout_from_models
    from weights_convert.transfer import copy_torch_to_paddle

    torch_model, paddle_model = spec.build_torch(**spec.kwargs), spec.build_paddle(**spec.kwargs)
    if weights:
        state = load_torch(weights)
        check_keys(state, layout_from_models(torch_model, paddle_model).torch_shapes, f"{weights}")
        torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    else:
        seeded_init_torch(torch_model, seed)
    copy_torch_to_paddle(torch_model, paddle_model)
    return torch_model, paddle_model
