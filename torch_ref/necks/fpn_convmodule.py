"""mmdetection 3.3's FPN as Faster/Libra R-CNN configures it, built from a minimal mmcv ConvModule (twin:
paddle_impl/necks/fpn_convmodule.py; float64 NumPy reference: align/numpy_ref/bfp.py; ../shared/specs/libra_rcnn.md
B.2 item 3, B.3).

C2..C5 -> P2..P6: 1x1 lateral convs, top-down sum with nearest resizing to the finer level's size, 3x3 output convs,
P6 = max_pool2d(P5, 1, stride 2) (add_extra_convs False: ceil(h/2) x ceil(w/2)). Keys as mmdet's:
lateral_convs.{i}.conv.*, fpn_convs.{i}.conv.* (the ConvModule's `conv` attribute).
"""
import torch.nn.functional as F
from torch import nn


class ConvModule(nn.Module):
    """mmcv ConvModule with norm_cfg None and act_cfg None: a Conv2d with bias, nothing else."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.init_weights()

    def init_weights(self):
        """mmcv's own init (Kaiming normal, fan_out, relu; bias 0); FPN and NonLocal2d override it (B.3)."""
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.conv(x)


class FPN(nn.Module):
    def __init__(self, in_channels=(256, 512, 1024, 2048), out_channels=256, num_outs=5):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs ({num_outs}) must be >= the number of inputs ({len(in_channels)})")
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.init_weights()

    def init_weights(self):
        """B.3: Xavier uniform (gain 1) on every conv, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):   # by size, not by a factor 2: odd sizes round differently
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        for _ in range(self.num_outs - len(outs)):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
