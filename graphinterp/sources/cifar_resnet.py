"""The CIFAR ResNets of He et al. (2016), so that their bare state_dicts trace as DAGs.

The widely shared CIFAR-10 ResNet-20/32/44/56/110 checkpoints (three stages of ``n`` basic blocks,
16/32/64 channels, option-A shortcuts: stride-2 subsampling and zero-padded channels, no
parameters) are bare state_dicts with keys ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}``,
``layer{1,2,3}.{i}.bn{1,2}`` and ``linear``. :func:`recognise` rebuilds the module from such a
state_dict, so that graphinterp can trace its residual streams and fold its BatchNorms instead of
analysing each convolution on its own.

Examples
--------
>>> import torch
>>> model = cifar_resnet(20)
>>> sum(p.numel() for p in model.parameters())
269722
>>> rebuilt = recognise(model.state_dict())
>>> rebuilt[1], rebuilt[0](torch.zeros(1, 3, 32, 32)).shape
('CIFAR ResNet-20 (He et al. 2016, option-A shortcuts)', torch.Size([1, 10]))
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["cifar_resnet", "recognise"]

_WIDTHS = (16, 32, 64)
_BLOCK_KEY = re.compile(r"^layer([123])\.(\d+)\.(conv1|conv2|bn1|bn2)\.")
_TOP = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "linear.weight", "linear.bias"}


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: conv 3->16, three stages of ``n`` basic blocks, global pool, linear."""

    def __init__(self, blocks: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for stage, width in enumerate(_WIDTHS, 1):
            layers = []
            for i in range(blocks):
                layers.append(_Block(cin, width, 2 if stage > 1 and i == 0 else 1))
                cin = width
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int = 20, num_classes: int = 10) -> CifarResNet:
    """A randomly initialised CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes)


def recognise(state_dict: Mapping[str, torch.Tensor]) -> Optional[Tuple[nn.Module, str]]:
    """Rebuild a CIFAR ResNet from its state_dict, or None when the keys or shapes are not those of one.

    Returns ``(module, description)`` with the weights loaded (strictly) and the module in eval mode.
    """
    keys = set(state_dict)
    if not _TOP <= keys:
        return None
    blocks = {}
    for key in keys - _TOP:
        match = _BLOCK_KEY.match(key)
        if match is None and not key.endswith("num_batches_tracked"):
            return None
        if match is not None:
            stage, index = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), index + 1)
    if sorted(blocks) != [1, 2, 3] or len(set(blocks.values())) != 1:
        return None
    n = blocks[1]
    weight = state_dict["linear.weight"]
    if getattr(weight, "dim", lambda: 0)() != 2 or weight.shape[1] != 64:
        return None
    model = CifarResNet(n, int(weight.shape[0]))
    try:
        model.load_state_dict({k: v for k, v in state_dict.items()}, strict=False)
        missing = set(model.state_dict()) - keys
        if any(not k.endswith("num_batches_tracked") for k in missing):
            return None
    except (RuntimeError, ValueError):
        return None
    return model.eval(), f"CIFAR ResNet-{6 * n + 2} (He et al. 2016, option-A shortcuts)"
