"""CustomCSPPAN, PP-YOLOE's neck, with PaddleDetection's names (twin: paddle_impl/necks/custom_pan.py).

Input: the backbone's [C3, C4, C5]; output: [stride 32, stride 16, stride 8]. The FPN goes top-down
(fpn_stages, fpn_routes + nearest x2), the PAN bottom-up (pan_routes 3x3 s2, pan_stages); every concat puts
the route first. The ModuleLists are stored in PaddleDetection's (reversed) order.
"""
import torch
import torch.nn.functional as F
from torch import nn

from torch_ref.backbones.cspresnet import BasicBlock, ConvBNLayer, scaled


class SPP(nn.Module):
    """concat [x, maxpool5, maxpool9, maxpool13] (stride 1, same size), then a ConvBN."""

    def __init__(self, ch_in, ch_out, k, pool_size=(5, 9, 13)):
        super().__init__()
        for i, size in enumerate(pool_size):
            self.add_module(f"pool{i}", nn.MaxPool2d(size, stride=1, padding=size // 2, ceil_mode=False))
        self.num_pools = len(pool_size)
        self.conv = ConvBNLayer(ch_in, ch_out, k, padding=k // 2)

    def forward(self, x):
        outs = [x] + [getattr(self, f"pool{i}")(x) for i in range(self.num_pools)]
        return self.conv(torch.cat(outs, dim=1))


class CSPStage(nn.Module):
    """conv1 | conv2 -> n BasicBlocks (no shortcut, SPP after block (n-1)//2 if spp) -> concat -> conv3."""

    def __init__(self, ch_in, ch_out, n, spp=False):
        super().__init__()
        ch_mid = ch_out // 2
        self.conv1 = ConvBNLayer(ch_in, ch_mid, 1)
        self.conv2 = ConvBNLayer(ch_in, ch_mid, 1)
        self.convs = nn.Sequential()
        for i in range(n):
            self.convs.add_module(str(i), BasicBlock(ch_mid, ch_mid, shortcut=False))
            if i == (n - 1) // 2 and spp:
                self.convs.add_module("spp", SPP(ch_mid * 4, ch_mid, 1))
        self.conv3 = ConvBNLayer(ch_mid * 2, ch_out, 1)

    def forward(self, x):
        return self.conv3(torch.cat([self.conv1(x), self.convs(self.conv2(x))], dim=1))


def _stage(ch_in, ch_out, n, spp):
    stage = nn.Sequential()
    stage.add_module("0", CSPStage(ch_in, ch_out, n, spp=spp))      # stage_num 1
    return stage


class CustomCSPPAN(nn.Module):
    def __init__(self, in_channels=(256, 512, 1024), out_channels=(768, 384, 192), block_num=3, spp=True,
                 width_mult=1.0, depth_mult=1.0):
        super().__init__()
        out_channels = scaled(out_channels, width_mult)
        block_num = scaled([block_num], depth_mult)[0]
        self.num_blocks = len(in_channels)
        self.out_channels = out_channels
        fpn_stages, fpn_routes = [], []
        ch_pre = 0
        for i, (ch_in, ch_out) in enumerate(zip(list(in_channels)[::-1], out_channels)):
            if i > 0:
                ch_in += ch_pre // 2
            fpn_stages.append(_stage(ch_in, ch_out, block_num, spp and i == 0))
            if i < self.num_blocks - 1:
                fpn_routes.append(ConvBNLayer(ch_out, ch_out // 2, 1, stride=1, padding=0))
            ch_pre = ch_out
        self.fpn_stages = nn.ModuleList(fpn_stages)
        self.fpn_routes = nn.ModuleList(fpn_routes)
        pan_stages, pan_routes = [], []
        for i in reversed(range(self.num_blocks - 1)):
            pan_routes.append(ConvBNLayer(out_channels[i + 1], out_channels[i + 1], 3, stride=2, padding=1))
            pan_stages.append(_stage(out_channels[i] + out_channels[i + 1], out_channels[i], block_num, False))
        self.pan_stages = nn.ModuleList(pan_stages[::-1])
        self.pan_routes = nn.ModuleList(pan_routes[::-1])

    def forward(self, blocks):
        fpn_feats = []
        route = None
        for i, block in enumerate(blocks[::-1]):
            if i > 0:
                block = torch.cat([route, block], dim=1)
            route = self.fpn_stages[i](block)
            fpn_feats.append(route)
            if i < self.num_blocks - 1:
                route = F.interpolate(self.fpn_routes[i](route), scale_factor=2.0, mode="nearest")
        pan_feats = [fpn_feats[-1]]
        route = fpn_feats[-1]
        for i in reversed(range(self.num_blocks - 1)):
            route = self.pan_stages[i](torch.cat([self.pan_routes[i](route), fpn_feats[i]], dim=1))
            pan_feats.append(route)
        return pan_feats[::-1]
