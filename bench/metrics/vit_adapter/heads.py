"""UperNet decode head and FCN auxiliary head with mmsegmentation 0.x's parameter layout.

mmseg's ``ConvModule(conv -> BN -> ReLU)`` is :class:`ConvBNReLU` (keys ``conv.weight``,
``bn.*``; no conv bias, as mmseg drops it before a norm). Hand-written: transformers' UperNet
has another key layout (and no FCN head of this form), and mmseg needs mmcv's compiled ops.

:class:`UPerHead` (Xiao et al., ECCV 2018): a pyramid pooling module (``psp_modules``,
``bottleneck``) on the last map, FPN laterals and top-down sums (``lateral_convs``,
``fpn_convs``), all levels upsampled to the first and fused (``fpn_bottleneck``), then the
1x1 classifier ``conv_seg``. Resizes are bilinear with ``align_corners=False``. Returns logits
at the first map's size (1/4 of the input). :class:`FCNHead` is the training-time auxiliary head
(kept so the released checkpoint loads strictly; not used at inference).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    """in_channels: channels of the 4 input maps; channels: the head's width."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int,
                 pool_scales=(1, 2, 3, 6)) -> None:
        super().__init__()
        self.psp_modules = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels[-1], channels, 1))
                                          for s in pool_scales])
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [_up(m(x), x.shape[2:]) for m in self.psp_modules]
        return self.bottleneck(torch.cat(outs, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _up(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        outs = [outs[0]] + [_up(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, 1))))


class FCNHead(nn.Module):
    """One 3x3 ConvBNReLU then the classifier, on map ``in_index`` (training-time auxiliary head)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, in_index: int = 2) -> None:
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(ConvBNReLU(in_channels, channels, 3))
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(feats[self.in_index])))
