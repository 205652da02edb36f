"""Static AlphaNet blocks, named like timm's so that state-dict keys follow timm conventions.

Unlike timm's InvertedResidual, every AlphaNet block is residual: a stride-2 block averages its input
(zero padding counted, aligned to the bottom/right edge like the original's odd-size padding) and a
width change adds a bias-free 1x1 conv on the shortcut.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, DropPath, SEModule, create_conv2d, get_act_layer

from ..config import ACTIVATIONS, BlockSpec

__all__ = ['ShortcutPool', 'Shortcut', 'MBConv', 'ConvBnAct', 'act_layer_for']


def act_layer_for(name: str) -> Callable[..., nn.Module]:
    """timm activation layer for an original `act_func` name ('swish', 'relu', 'h_swish', 'relu6')."""
    return get_act_layer(ACTIVATIONS[name])


class ShortcutPool(nn.Module):
    """2x2 average pool, stride 2, that pads one zero row/column on top/left when a side is odd.

    Matches the original `avg_pool2d(x, 2, 2, padding=0 if even else 1)` (its right/bottom padding is never
    read) while keeping forward free of Python branches: the pad amount is shape arithmetic only.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x = F.pad(x, [w % 2, 0, h % 2, 0])
        return F.avg_pool2d(x, 2, 2)


class Shortcut(nn.Module):
    """Residual path: optional stride-2 pooling, then a 1x1 conv (no BN, no bias) if the width changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, device=None, dtype=None):
        super().__init__()
        self.pool = ShortcutPool() if stride > 1 else nn.Identity()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False, device=device, dtype=dtype) \
            if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project, plus `shortcut`.

    Attribute names follow timm's InvertedResidual (`conv_pw`, `bn1`, `conv_dw`, `bn2`, `se`, `conv_pwl`,
    `bn3`, `drop_path`); `conv_pw`/`bn1` are Identity when the expand ratio is 1.
    """

    def __init__(
            self,
            spec: BlockSpec,
            drop_path_rate: float = 0.,
            bn_momentum: float = 0.1,
            bn_eps: float = 1e-5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        act_layer = act_layer_for(spec.act)
        bn = dict(momentum=bn_momentum, eps=bn_eps, act_layer=act_layer, **dd)
        if spec.expand_ratio != 1:
            self.conv_pw = create_conv2d(spec.in_chs, spec.mid_chs, 1, **dd)
            self.bn1 = BatchNormAct2d(spec.mid_chs, **bn)
        else:
            self.conv_pw = nn.Identity()
            self.bn1 = nn.Identity()
        self.conv_dw = create_conv2d(spec.mid_chs, spec.mid_chs, spec.kernel_size, stride=spec.stride,
                                     padding=spec.kernel_size // 2, depthwise=True, **dd)
        self.bn2 = BatchNormAct2d(spec.mid_chs, **bn)
        self.se = SEModule(spec.mid_chs, rd_channels=spec.se_chs, act_layer=nn.ReLU, gate_layer='hard_sigmoid', **dd) \
            if spec.se_chs else nn.Identity()
        self.conv_pwl = create_conv2d(spec.mid_chs, spec.out_chs, 1, **dd)
        self.bn3 = BatchNormAct2d(spec.out_chs, apply_act=False, **bn)
        self.shortcut = Shortcut(spec.in_chs, spec.out_chs, spec.stride, **dd)
        # as in the original, drop-connect only where the shortcut is the identity
        identity = spec.stride == 1 and spec.in_chs == spec.out_chs
        self.drop_path = DropPath(drop_path_rate) if identity and drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.conv_pw(x)
        x = self.bn1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        return self.drop_path(x) + shortcut


class ConvBnAct(nn.Module):
    """1x1 conv + BN + activation (the head's expansion layer), named like timm's efficientnet ConvBnAct."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: Callable[..., nn.Module],
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.conv = create_conv2d(in_chs, out_chs, 1, device=device, dtype=dtype)
        self.bn1 = BatchNormAct2d(out_chs, momentum=bn_momentum, eps=bn_eps, act_layer=act_layer,
                                  device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x))
