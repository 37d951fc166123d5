"""A ResNet-style DR grader in plain PyTorch: the kind of model a user brings to the Koch test.

Nothing here imports koch_explore. It is a stand-in for "your own model": BatchNorm + ReLU, residual
basic blocks, global average pooling and a 5-class softmax head over the ICDR grades 0-4. It expects
RGB in [0, 1] normalised with the ImageNet mean and standard deviation, as most torchvision-style
models do; telling the kit about that normalisation is the adapter's job
(``koch_explore.adapt(model, mean=..., std=..., output="softmax")``).

Build it with ``resnet_dr()``; ``examples/train_resnet.py`` trains it on EyePACS-256.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and ReLU, plus the identity (or a strided 1x1 projection)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetDR(nn.Module):
    """stem (3x3 stride 2, 3x3, max-pool: 1/4 resolution) -> four stages of basic blocks (strides 1, 2,
    2, 2: 1/32 at the end) -> global average pool -> linear head with ``num_classes`` logits."""

    def __init__(self, widths=(32, 64, 128, 256), blocks=(2, 2, 2, 2), num_classes: int = 5):
        super().__init__()
        w0 = widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
            nn.Conv2d(w0, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, c = [], w0
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(c, w, 1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            c = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last BN of each residual branch: every block starts as the identity (Goyal et al.).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_dr(num_classes: int = 5) -> ResNetDR:
    """The factory the CLI names: ``--model examples/resnet_dr.py:resnet_dr``."""
    return ResNetDR(num_classes=num_classes)
