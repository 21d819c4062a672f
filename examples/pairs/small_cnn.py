"""An example pair file: a small CNN in torch and its Paddle port.

    python -m align forward  --pair examples/pairs/small_cnn.py
    python -m align backward --pair examples/pairs/small_cnn.py [--dtype float32]
    python -m align train    --pair examples/pairs/small_cnn.py --steps 3

The Paddle port pools with a plain mean over H and W. SMALL_CNN_POOL=adaptive makes it use
nn.AdaptiveAvgPool2D instead, whose float64 backward in Paddle 3.3.1 scales the gradient by float32(1/(H*W)):
backward in float64 then fails at the first gradient through the pool, with the defect named.
"""
import os

import numpy as np
import paddle
import torch

from align.seeded_init import seeded_init_torch


class TorchCNN(torch.nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, classes)

    def forward(self, images):
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class MeanPool(paddle.nn.Layer):
    """Global average pooling as a plain mean over H and W (see the module docstring for why)."""

    def forward(self, x):
        return x.mean(axis=[2, 3], keepdim=True)


class PaddleCNN(paddle.nn.Layer):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.bn1 = paddle.nn.BatchNorm2D(8)
        self.relu = paddle.nn.ReLU()
        self.conv2 = paddle.nn.Conv2D(8, 16, 3, stride=2, padding=1)
        adaptive = os.environ.get("SMALL_CNN_POOL") == "adaptive"
        self.pool = paddle.nn.AdaptiveAvgPool2D(1) if adaptive else MeanPool()
        self.fc = paddle.nn.Linear(16, classes)

    def forward(self, images):
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.conv2(x))
        return self.fc(paddle.flatten(self.pool(x), 1))


def build_pair(dtype):
    torch_model = seeded_init_torch(TorchCNN(), seed=0).to(getattr(torch, dtype))
    paddle_model = PaddleCNN()
    paddle_model.to(dtype=dtype)
    inputs = {"images": np.random.default_rng(0).normal(size=(2, 3, 12, 10)).astype(dtype)}
    return torch_model, paddle_model, inputs


def batches(step):
    """A fresh seeded batch per training step."""
    return {"images": np.random.default_rng(100 + step).normal(size=(2, 3, 12, 10))}
