"""Paddle semantics that PaddleDetection models rely on, reproduced in torch where the frameworks differ.

Each helper names the difference it reproduces (../shared/specs/ppyoloe.md A.14); tests/test_paddle_semantics.py
checks each one against Paddle itself and shows that torch's built-in differs.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Paddle's BatchNorm2D momentum and epsilon are float32 kernel attributes, even in float64.
PADDLE_BN_EPSILON = float(np.float32(1e-5))            # 9.999999747378752e-06
PADDLE_BN_MOMENTUM = 1.0 - float(np.float32(0.9))      # torch's convention: weight of the batch statistic
# Paddle's F.hardsigmoid: slope float32(0.1666667), not 1/6, so it saturates at +-2.9999994, not +-3.
PADDLE_HARDSIGMOID_SLOPE = float(np.float32(0.1666667))


class PaddleBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d computing what Paddle's BatchNorm2D computes: float32 momentum and epsilon, and the
    running variance updated with the biased batch variance (torch's built-in uses the unbiased one)."""

    def __init__(self, num_features):
        super().__init__(num_features, eps=PADDLE_BN_EPSILON, momentum=PADDLE_BN_MOMENTUM)

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        # normalise with the batch statistics, then update the running ones as Paddle does
        out = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        with torch.no_grad():
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            self.running_mean.mul_(1.0 - self.momentum).add_(mean, alpha=self.momentum)
            self.running_var.mul_(1.0 - self.momentum).add_(var, alpha=self.momentum)
            self.num_batches_tracked.add_(1)
        return out


def paddle_hardsigmoid(x):
    """Paddle's F.hardsigmoid (slope float32(0.1666667), offset 0.5); torch's F.hardsigmoid uses 1/6."""
    return torch.clamp(x * PADDLE_HARDSIGMOID_SLOPE + 0.5, 0.0, 1.0)


def one_hot(labels, num_classes, dtype):
    """F.one_hot in a float dtype: Paddle's returns float32, torch's int64; both twins cast to `dtype`."""
    return F.one_hot(labels, num_classes).to(dtype)
