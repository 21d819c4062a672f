"""FPN producing P3-P7 for RetinaNet.

Default (GHM paper / mmdetection): P6 from C5 by a stride-2 3x3 conv, P7 from P6 without ReLU.
`extra_from='p5', relu_before_p7=True` gives torchvision's v1 LastLevelP6P7 instead.
"""
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    def __init__(self, in_channels=(512, 1024, 2048), out_channels=256, extra_from="c5", relu_before_p7=False):
        super().__init__()
        if extra_from not in ("c5", "p5"):
            raise ValueError(f"extra_from must be 'c5' or 'p5', got {extra_from!r}")
        self.extra_from = extra_from
        self.relu_before_p7 = relu_before_p7
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        p6_in = in_channels[-1] if extra_from == "c5" else out_channels
        self.p6_conv = nn.Conv2d(p6_in, out_channels, 3, stride=2, padding=1)
        self.p7_conv = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        p6 = self.p6_conv(inputs[-1] if self.extra_from == "c5" else outs[-1])
        p7 = self.p7_conv(F.relu(p6) if self.relu_before_p7 else p6)
        return tuple(outs) + (p6, p7)
