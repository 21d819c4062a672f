"""ResNet-50, the Paddle twin of torch_ref/backbones/resnet.py (same layer and parameter names).

RetinaNet trains it with the stem and the first `frozen_stages` stages frozen (stop_gradient) and every
BatchNorm using its running statistics (`norm_eval`), as mmdetection's retinanet configs do. Paddle's way
to say so is BatchNorm2D(use_global_stats=True) (torch's twin switches those BatchNorms to eval mode).
"""
import paddle
from paddle import nn


class GlobalAvgPool(nn.Layer):
    """AdaptiveAvgPool2D((1, 1)) written as a mean over H and W.

    Paddle 3.3.1 defect: nn.AdaptiveAvgPool2D's float64 backward scales the gradient by float32(1/(H*W))
    (0.05000000074505806 on a 4x5 map), so every gradient upstream of it is ~1.5e-8 off in float64
    (tests/test_backward.py::test_paddle_adaptive_avg_pool_float64_backward_defect_is_still_there)."""

    def forward(self, x):
        return x.mean(axis=[2, 3], keepdim=True)


class Bottleneck(nn.Layer):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, global_stats=None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2D(inplanes, width, 1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(width, use_global_stats=global_stats)
        self.conv2 = nn.Conv2D(width, width, 3, stride=stride, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(width, use_global_stats=global_stats)
        self.conv3 = nn.Conv2D(width, planes * self.expansion, 1, bias_attr=False)
        self.bn3 = nn.BatchNorm2D(planes * self.expansion, use_global_stats=global_stats)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Layer):
    """ResNet-50 (layers [3, 4, 6, 3]).

    num_classes: size of the `fc` classifier; None builds a backbone that returns the stage outputs
    selected by `out_indices` (0 = layer1 ... 3 = layer4) instead of logits.
    """

    def __init__(self, layers=(3, 4, 6, 3), num_classes=1000, out_indices=(1, 2, 3), frozen_stages=-1,
                 norm_eval=False):
        super().__init__()
        self.inplanes = 64
        self.num_classes = num_classes
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        # use_global_stats=None follows train()/eval(); True always uses the running statistics
        frozen = [True if (norm_eval or i <= frozen_stages) else None for i in range(5)]
        self.conv1 = nn.Conv2D(3, 64, 7, stride=2, padding=3, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(64, use_global_stats=True if frozen_stages >= 0 or norm_eval else None)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2D(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], global_stats=frozen[1])
        self.layer2 = self._make_layer(128, layers[1], stride=2, global_stats=frozen[2])
        self.layer3 = self._make_layer(256, layers[2], stride=2, global_stats=frozen[3])
        self.layer4 = self._make_layer(512, layers[3], stride=2, global_stats=frozen[4])
        if num_classes is not None:
            self.avgpool = GlobalAvgPool()
            self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        self._freeze_stages()

    def _make_layer(self, planes, blocks, stride=1, global_stats=None):
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2D(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias_attr=False),
                nn.BatchNorm2D(planes * Bottleneck.expansion, use_global_stats=global_stats),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, global_stats)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, global_stats=global_stats) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _frozen_layers(self):
        if self.frozen_stages >= 0:
            yield from (self.conv1, self.bn1)
        for i in range(1, self.frozen_stages + 1):
            yield getattr(self, f"layer{i}")

    def _freeze_stages(self):
        for layer in self._frozen_layers():
            for p in layer.parameters():
                p.stop_gradient = True

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        if self.num_classes is None:
            return tuple(outs)
        return self.fc(paddle.flatten(self.avgpool(x), 1))


def resnet50(**kwargs):
    return ResNet((3, 4, 6, 3), **kwargs)
