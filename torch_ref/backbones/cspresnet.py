"""CSPResNet, PP-YOLOE's backbone, with PaddleDetection's names (twin: paddle_impl/backbones/cspresnet.py).

The building blocks (ConvBNLayer, RepVggBlock, BasicBlock) are shared with the CustomCSPPAN neck, as in
PaddleDetection. BatchNorm is PaddleBatchNorm2d (Paddle's float32 momentum and epsilon, biased running
variance) and EffectiveSE uses Paddle's hardsigmoid, so the twins compute the same thing in float64.
"""
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.ops.paddle_semantics import PaddleBatchNorm2d, paddle_hardsigmoid

# Paddle's RepVggBlock.convert_to_deploy reads bn._epsilon, the Python float (the kernel uses float32(1e-5)).
FOLD_EPSILON = 1e-5


def scaled(values, mult):
    """PaddleDetection's multiplier rule: max(round(v * mult), 1), Python's round."""
    return [max(round(v * mult), 1) for v in values]


class ConvBNLayer(nn.Module):
    """Conv (no bias) + BatchNorm + optional swish (PaddleDetection's swish is SiLU)."""

    def __init__(self, ch_in, ch_out, filter_size=3, stride=1, groups=1, padding=0, act=True):
        super().__init__()
        self.conv = nn.Conv2d(ch_in, ch_out, filter_size, stride, padding, groups=groups, bias=False)
        self.bn = PaddleBatchNorm2d(ch_out)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.silu(x) if self.act else x


class RepVggBlock(nn.Module):
    """swish(ConvBN3x3(x) + ConvBN1x1(x)) (no identity branch); convert_to_deploy folds both into `conv`."""

    def __init__(self, ch_in, ch_out):
        super().__init__()
        self.ch_in, self.ch_out = ch_in, ch_out
        self.conv1 = ConvBNLayer(ch_in, ch_out, 3, stride=1, padding=1, act=False)
        self.conv2 = ConvBNLayer(ch_in, ch_out, 1, stride=1, padding=0, act=False)

    def forward(self, x):
        y = self.conv(x) if hasattr(self, "conv") else self.conv1(x) + self.conv2(x)
        return F.silu(y)

    @torch.no_grad()
    def convert_to_deploy(self):
        """Fold each branch's BN into its conv and the 1x1 kernel into the 3x3 centre (PaddleDetection's order)."""
        if not hasattr(self, "conv"):
            self.conv = nn.Conv2d(self.ch_in, self.ch_out, 3, stride=1, padding=1).to(self.conv1.conv.weight)
        k3, b3 = self._fuse_bn_tensor(self.conv1)
        k1, b1 = self._fuse_bn_tensor(self.conv2)
        self.conv.weight.copy_(k3 + F.pad(k1, [1, 1, 1, 1]))
        self.conv.bias.copy_(b3 + b1)
        del self.conv1, self.conv2

    @staticmethod
    def _fuse_bn_tensor(branch):
        bn = branch.bn
        std = (bn.running_var + FOLD_EPSILON).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return branch.conv.weight * t, bn.bias - bn.running_mean * bn.weight / std


class BasicBlock(nn.Module):
    def __init__(self, ch_in, ch_out, shortcut=True):
        super().__init__()
        if ch_in != ch_out:
            raise ValueError(f"BasicBlock needs ch_in == ch_out, got {ch_in} and {ch_out}")
        self.conv1 = ConvBNLayer(ch_in, ch_out, 3, stride=1, padding=1)
        self.conv2 = RepVggBlock(ch_out, ch_out)
        self.shortcut = shortcut

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class EffectiveSELayer(nn.Module):
    """x * hardsigmoid(fc(mean_HW(x))), with Paddle's hardsigmoid."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * paddle_hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class CSPResStage(nn.Module):
    def __init__(self, ch_in, ch_out, n, stride=2):
        super().__init__()
        ch_mid = (ch_in + ch_out) // 2
        self.conv_down = ConvBNLayer(ch_in, ch_mid, 3, stride=2, padding=1) if stride == 2 else None
        self.conv1 = ConvBNLayer(ch_mid, ch_mid // 2, 1)
        self.conv2 = ConvBNLayer(ch_mid, ch_mid // 2, 1)
        self.blocks = nn.Sequential(*[BasicBlock(ch_mid // 2, ch_mid // 2, shortcut=True) for _ in range(n)])
        self.attn = EffectiveSELayer(ch_mid)
        self.conv3 = ConvBNLayer(ch_mid, ch_out, 1)

    def forward(self, x):
        if self.conv_down is not None:
            x = self.conv_down(x)
        y = torch.cat([self.conv1(x), self.blocks(self.conv2(x))], dim=1)
        return self.conv3(self.attn(y))


class CSPResNet(nn.Module):
    """Large stem (conv1 s2, conv2, conv3) and four stride-2 CSPResStages; returns the stages in return_idx
    (strides 8, 16, 32 by default)."""

    def __init__(self, layers=(3, 6, 6, 3), channels=(64, 128, 256, 512, 1024), return_idx=(1, 2, 3),
                 width_mult=1.0, depth_mult=1.0):
        super().__init__()
        channels = scaled(channels, width_mult)
        layers = scaled(layers, depth_mult)
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", ConvBNLayer(3, channels[0] // 2, 3, stride=2, padding=1))
        self.stem.add_module("conv2", ConvBNLayer(channels[0] // 2, channels[0] // 2, 3, stride=1, padding=1))
        self.stem.add_module("conv3", ConvBNLayer(channels[0] // 2, channels[0], 3, stride=1, padding=1))
        self.stages = nn.Sequential(*[CSPResStage(channels[i], channels[i + 1], layers[i])
                                      for i in range(len(channels) - 1)])
        self.return_idx = tuple(return_idx)
        self.out_channels = [channels[i + 1] for i in self.return_idx]

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)
        return outs
