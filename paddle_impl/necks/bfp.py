"""mmdetection 3.3's BFP (balanced feature pyramid) with mmcv's NonLocal2d refine, and Libra R-CNN's neck
Sequential(FPN, BFP) (Paddle twin of torch_ref/necks/bfp.py; float64 NumPy reference: align/numpy_ref/bfp.py;
../shared/specs/libra_rcnn.md B.1, B.2 items 4-5, B.3).

gather: levels below refine_level adaptive-max-pooled, the others nearest-resized to the refine level's size; mean.
refine: embedded-Gaussian non-local block (reduction 1, no 1/sqrt(C) scale). scatter: the inverse resizing, added
to each input as a residual. Keys: refine.{g,conv_out,theta,phi}.conv.* in mmcv's registration order.
"""
import paddle
import paddle.nn.functional as F
from paddle import nn

from paddle_impl.necks.fpn_convmodule import FPN, ConvModule


class NonLocal2d(nn.Layer):
    """mmcv NonLocal2d, mode 'embedded_gaussian', sub_sample False, no norm."""

    def __init__(self, in_channels=256, reduction=1, use_scale=False):
        super().__init__()
        self.inter_channels = max(in_channels // reduction, 1)
        self.use_scale = use_scale
        # registration order g, conv_out, theta, phi: mmcv's, so the state_dict lists them as mmdet does
        self.g = ConvModule(in_channels, self.inter_channels, 1)
        self.conv_out = ConvModule(self.inter_channels, in_channels, 1)
        self.theta = ConvModule(in_channels, self.inter_channels, 1)
        self.phi = ConvModule(in_channels, self.inter_channels, 1)
        self.init_weights()

    def init_weights(self, std=0.01):
        """B.3: g, theta, phi Normal(0, std), bias 0; conv_out weight and bias 0 (the block starts as identity)."""
        for m in (self.g, self.theta, self.phi):
            nn.initializer.Normal(0.0, std)(m.conv.weight)
            nn.initializer.Constant(0.0)(m.conv.bias)
        nn.initializer.Constant(0.0)(self.conv_out.conv.weight)
        nn.initializer.Constant(0.0)(self.conv_out.conv.bias)

    def embedded_gaussian(self, theta_x, phi_x):
        """[B, N, C] @ [B, C, N] -> softmax over the last axis [B, N, N]."""
        pairwise = paddle.matmul(theta_x, phi_x)
        if self.use_scale:
            pairwise = pairwise / theta_x.shape[-1] ** 0.5
        return F.softmax(pairwise, axis=-1)

    def forward(self, x):
        n, c = x.shape[0], self.inter_channels
        g_x = self.g(x).reshape([n, c, -1]).transpose([0, 2, 1])            # [B, N, C]
        theta_x = self.theta(x).reshape([n, c, -1]).transpose([0, 2, 1])    # [B, N, C]
        phi_x = self.phi(x).reshape([n, c, -1])                             # [B, C, N]
        y = paddle.matmul(self.embedded_gaussian(theta_x, phi_x), g_x)
        y = y.transpose([0, 2, 1]).reshape([n, c, *x.shape[2:]])
        return x + self.conv_out(y)


class BFP(nn.Layer):
    def __init__(self, in_channels=256, num_levels=5, refine_level=2, refine_type="non_local"):
        super().__init__()
        if refine_type != "non_local":
            raise ValueError(f"only refine_type 'non_local' (Libra R-CNN's) is implemented, got {refine_type!r}")
        if not 0 <= refine_level < num_levels:
            raise ValueError(f"refine_level must lie in [0, {num_levels}), got {refine_level}")
        self.num_levels = num_levels
        self.refine_level = refine_level
        self.refine = NonLocal2d(in_channels, reduction=1, use_scale=False)
        self.init_weights()

    def init_weights(self):
        """B.3: BFP's Xavier uniform on every conv first, then NonLocal2d's own init (which overrides it all)."""
        for m in self.sublayers():
            if isinstance(m, nn.Conv2D):
                nn.initializer.XavierUniform()(m.weight)
                nn.initializer.Constant(0.0)(m.bias)
        self.refine.init_weights()

    def gather(self, inputs):
        """The balanced semantic feature before refining: mean of all levels at the refine level's size."""
        size = inputs[self.refine_level].shape[-2:]
        feats = [F.adaptive_max_pool2d(x, size) if i < self.refine_level else F.interpolate(x, size=size,
                                                                                          mode="nearest")
                 for i, x in enumerate(inputs)]
        return sum(feats) / len(feats)

    def scatter(self, bsf, inputs):
        outs = []
        for i, x in enumerate(inputs):
            size = x.shape[-2:]
            residual = (F.interpolate(bsf, size=size, mode="nearest") if i < self.refine_level
                        else F.adaptive_max_pool2d(bsf, size))
            outs.append(residual + x)
        return tuple(outs)

    def forward(self, inputs):
        if len(inputs) != self.num_levels:
            raise ValueError(f"BFP expects {self.num_levels} levels, got {len(inputs)}")
        return self.scatter(self.refine(self.gather(inputs)), inputs)


def libra_neck():
    """Libra R-CNN's neck as mmengine builds the list config: keys neck.0.* (FPN) and neck.1.* (BFP)."""
    return nn.Sequential(FPN((256, 512, 1024, 2048), 256, num_outs=5), BFP(256, num_levels=5, refine_level=2))
