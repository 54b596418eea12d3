"""PyTorch models with the layer structure of common image classifiers (random weights, narrow
widths and small inputs so the tests stay fast), for the ONNX import tests.

Importing this module needs torch; the ResNet blocks come from tests/torchvision_stub (the
layout of torchvision's, so zennit's ResNet canonizer recognises them).
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torchvision_stub"))
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: E402


def _randomise_bn(model, gen):
    """Random BatchNorm statistics and affine parameters (else BN is the identity)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def vgg16(width=8, classes=10, bn=False):
    """VGG-16's 13 convolutions / 5 max pools / 3 dense layers, channels 64..512 / (64/width)."""
    cfg = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers += [nn.Conv2d(c, v * width, 3, padding=1)]
        layers += [nn.BatchNorm2d(v * width)] if bn else []
        layers += [nn.ReLU(inplace=True)]
        c = v * width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, 8 * width), nn.ReLU(True),
                         nn.Dropout(), nn.Linear(8 * width, 8 * width), nn.ReLU(True),
                         nn.Dropout(), nn.Linear(8 * width, classes))


def resnet18(width=16, classes=10):
    return ResNet(BasicBlock, [2, 2, 2, 2], classes, width)


def resnet50(width=8, classes=10):
    return ResNet(Bottleneck, [3, 4, 6, 3], classes, width)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project; ReLU6; the residual sum has
    no ReLU after it."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(True),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v2(classes=10):
    cfg = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 1, 1)]
    layers, c = [nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(True)], 8
    for t, cout, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
            c = cout
    layers += [nn.Conv2d(c, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(True),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """MobileNetV3's squeeze-and-excitation: GAP, 1x1 conv, ReLU, 1x1 conv, Hardsigmoid, and
    the gate multiplied onto the input (ONNX: a Mul of (N, C, H, W) by (N, C, 1, 1))."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        g = nn.functional.adaptive_avg_pool2d(x, 1)
        g = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(g))))
        return g * x


class MBConv3(nn.Module):
    """MobileNetV3's block: 1x1 expand, depthwise k x k, optional SE, 1x1 project (no
    activation), residual without an activation after the sum; Hardswish or ReLU."""

    def __init__(self, cin, hidden, cout, k, stride, se, hs):
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers = [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
                  nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
                  nn.BatchNorm2d(hidden), act()]
        layers += [SqueezeExcitation(hidden, max(hidden // 4, 4))] if se else []
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


def mobilenet_v3(classes=10):
    """MobileNetV3-Small's pattern: Hardswish, SE gates with Hardsigmoid, residuals, a
    Hardswish classifier head (narrow widths)."""
    cfg = [(8, 8, 8, 3, 2, True, False), (8, 24, 12, 3, 2, False, False),
           (12, 32, 12, 3, 1, False, False), (12, 48, 16, 5, 2, True, True),
           (16, 64, 16, 5, 1, True, True)]
    layers = [nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()]
    layers += [MBConv3(*c) for c in cfg]
    layers += [nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 32), nn.Hardswish(),
               nn.Dropout(0.2), nn.Linear(32, classes)]
    return nn.Sequential(*layers)


class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(True))
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), nn.ReLU(True))
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU(True))

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet(classes=10):
    """SqueezeNet 1.1: Fire modules (Concat), ceil-mode max pools, a conv classifier, GAP."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2), nn.ReLU(True), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(16, 4, 8, 8), Fire(16, 4, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(16, 8, 16, 16), Fire(32, 8, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(32, 8, 24, 24), Fire(48, 16, 32, 32),
        nn.Dropout(0.5), nn.Conv2d(64, classes, 1), nn.ReLU(True), nn.AdaptiveAvgPool2d(1),
        nn.Flatten())


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(True), nn.Conv2d(cin, 2 * growth, 1, bias=False),
                               nn.BatchNorm2d(2 * growth), nn.ReLU(True),
                               nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


def densenet(growth=4, blocks=(3, 4, 3), classes=10):
    """DenseNet-121's pattern: dense Concat blocks, transitions with BN-ReLU-conv-avgpool."""
    layers = [nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(True),
              nn.MaxPool2d(3, 2, 1)]
    c = 8
    for k, n in enumerate(blocks):
        for _ in range(n):
            layers.append(DenseLayer(c, growth))
            c += growth
        if k != len(blocks) - 1:
            layers += [nn.BatchNorm2d(c), nn.ReLU(True), nn.Conv2d(c, c // 2, 1, bias=False),
                       nn.AvgPool2d(2, 2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def alexnet(classes=10):
    """AlexNet (torchvision's layout: 11x11 stride 4 conv, overlapping max pools, 3 dense)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(48, 32, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Dropout(), nn.Linear(32 * 3 * 3, 64), nn.ReLU(True),
        nn.Dropout(), nn.Linear(64, 64), nn.ReLU(True), nn.Linear(64, classes))


#: name -> (builder, input H = W)
MODELS = {
    "vgg16": (vgg16, 32), "vgg16_bn": (lambda: vgg16(bn=True), 32),
    "resnet18": (resnet18, 48), "resnet50": (resnet50, 48),
    "mobilenet_v2": (mobilenet_v2, 32), "mobilenet_v3": (mobilenet_v3, 64),
    "squeezenet": (squeezenet, 64),
    "densenet": (densenet, 32), "alexnet": (alexnet, 127),
}


def _calibrate_bn(model, size, gen):
    """BatchNorm statistics from a few random batches (as training leaves them): activations
    then keep a unit scale through deep nets instead of shrinking layer by layer, as random
    initial weights would make them (LRP stabilisers like 1e-6 would then dominate)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None   # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size, generator=gen))
    return model.eval()


def build(name, seed=0):
    """(model in eval mode with random weights and BN statistics, input size)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    fn, size = MODELS[name]
    model = _randomise_bn(fn(), gen)
    if name.startswith("resnet"):
        model = _calibrate_bn(model, size, gen)
    return model, size
