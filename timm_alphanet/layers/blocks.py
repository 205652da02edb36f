"""Static AlphaNet blocks, named like timm's so that state-dict keys follow timm conventions.

Unlike timm's InvertedResidual, every AlphaNet block is residual: a stride-2 block averages its input
(zero padding counted, aligned to the bottom/right edge like the original's odd-size padding) and a
width change adds a bias-free 1x1 conv on the shortcut.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, DropPath, SEModule, get_act_layer

from ..spaces import ACTIVATIONS, BlockSpec

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

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, conv: Optional[bool] = None,
                 conv_layer: Callable[..., nn.Module] = nn.Conv2d, device=None, dtype=None):
        super().__init__()
        conv = in_chs != out_chs if conv is None else conv
        self.pool = ShortcutPool() if stride > 1 else nn.Identity()
        self.conv = conv_layer(in_chs, out_chs, 1, bias=False, device=device, dtype=dtype) if conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project, plus `shortcut`.

    Attribute names follow timm's InvertedResidual (`conv_pw`, `bn1`, `conv_dw`, `bn2`, `se`, `conv_pwl`,
    `bn3`, `drop_path`); `conv_pw`/`bn1` are Identity when the expand ratio is 1. The layer classes are
    class attributes so that the supernet's block can store the same layers at max size.
    """
    conv_layer = nn.Conv2d
    norm_act_layer = BatchNormAct2d
    se_layer = SEModule

    def __init__(
            self,
            spec: BlockSpec,
            drop_path_rate: float = 0.,
            bn_momentum: float = 0.1,
            bn_eps: float = 1e-5,
            shortcut_conv: Optional[bool] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        act_layer = act_layer_for(spec.act)
        bn = dict(momentum=bn_momentum, eps=bn_eps, act_layer=act_layer, **dd)
        conv, k = self.conv_layer, spec.kernel_size
        if spec.expand_ratio != 1:
            self.conv_pw = conv(spec.in_chs, spec.mid_chs, 1, bias=False, **dd)
            self.bn1 = self.norm_act_layer(spec.mid_chs, **bn)
        else:
            self.conv_pw = nn.Identity()
            self.bn1 = nn.Identity()
        self.conv_dw = conv(spec.mid_chs, spec.mid_chs, k, spec.stride, k // 2, groups=spec.mid_chs, bias=False, **dd)
        self.bn2 = self.norm_act_layer(spec.mid_chs, **bn)
        self.se = self.se_layer(spec.mid_chs, rd_channels=spec.se_chs, act_layer=nn.ReLU, gate_layer='hard_sigmoid',
                                **dd) if spec.se_chs else nn.Identity()
        self.conv_pwl = conv(spec.mid_chs, spec.out_chs, 1, bias=False, **dd)
        self.bn3 = self.norm_act_layer(spec.out_chs, apply_act=False, **bn)
        self.shortcut = Shortcut(spec.in_chs, spec.out_chs, spec.stride, conv=shortcut_conv, conv_layer=conv, **dd)
        self.drop_path = DropPath(drop_path_rate) if self._drop_path_allowed(spec) and drop_path_rate > 0 \
            else nn.Identity()

    @staticmethod
    def _drop_path_allowed(spec: BlockSpec) -> bool:
        # as in the original, drop-connect only where the shortcut is the identity
        return spec.stride == 1 and spec.in_chs == spec.out_chs

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

    conv_layer = nn.Conv2d
    norm_act_layer = BatchNormAct2d

    def __init__(self, in_chs: int, out_chs: int, act_layer: Callable[..., nn.Module],
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.conv = self.conv_layer(in_chs, out_chs, 1, bias=False, device=device, dtype=dtype)
        self.bn1 = self.norm_act_layer(out_chs, momentum=bn_momentum, eps=bn_eps, act_layer=act_layer,
                                       device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x))
