"""ResNet family: the torchvision-compatible classifier (torch_ref/backbones/resnet.py and its Paddle twin)."""
from align.zoo import GatePlan, ModelSpec, register


def _torch_resnet50(**kw):
    from torch_ref.backbones.resnet import resnet50
    return resnet50(**kw)


def _paddle_resnet50(**kw):
    from paddle_impl.backbones.resnet import resnet50
    return resnet50(**kw)


# no training recipe: backward_diff takes the gradient of a seeded projection of the logits (align.backward)
register(ModelSpec("resnet50", "torchvision-compatible ResNet-50 classifier (1000 classes)",
                   _torch_resnet50, _paddle_resnet50, (2, 3, 112, 144), family="resnet", gate=GatePlan()))
