"""Elastic versions of the AlphaNet blocks: the static blocks built from elastic layers at max size.

A block is configured for the active subnet by `set_active(spec)` with the subnet's BlockSpec (or
disabled, when the subnet's stage is shallower). Forward has no data-dependent control flow: every
branch reads a plain attribute set by `set_active`.
"""
from typing import Optional

import torch
import torch.nn as nn

from ..spaces import BlockSpec
from .blocks import ConvBnAct, MBConv
from .dynamic import DynamicBatchNormAct2d, DynamicConv2d, DynamicSqueezeExcite

__all__ = ['DynamicMBConv', 'DynamicConvBnAct']


class DynamicMBConv(MBConv):
    """MBConv storing its max-size tensors; width, kernel, expand ratio and on/off are set per subnet."""
    conv_layer = DynamicConv2d
    norm_act_layer = DynamicBatchNormAct2d
    se_layer = DynamicSqueezeExcite

    def __init__(self, spec: BlockSpec, drop_path_rate: float = 0., bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 shortcut_conv: Optional[bool] = None, device=None, dtype=None):
        super().__init__(spec, drop_path_rate, bn_momentum, bn_eps, shortcut_conv, device=device, dtype=dtype)
        self.max_spec = spec
        self.enabled = True
        self.use_pw = spec.expand_ratio != 1
        self.use_shortcut_conv = not isinstance(self.shortcut.conv, nn.Identity)
        self.identity_shortcut = self._drop_path_allowed(spec)
        self.drop_path_enabled = False

    @staticmethod
    def _drop_path_allowed(spec: BlockSpec) -> bool:
        return True  # decided per subnet in forward: only blocks whose active shortcut is the identity

    def set_active(self, spec: Optional[BlockSpec]) -> None:
        """Configure for one subnet's block (`spec`), or disable the block (`None`: beyond the stage's depth)."""
        self.enabled = spec is not None
        if spec is None:
            return
        self.use_pw = spec.expand_ratio != 1
        if self.use_pw:
            self.conv_pw.active_out_channels = spec.mid_chs
        self.conv_dw.active_kernel_size = spec.kernel_size
        if spec.se_chs:
            self.se.active_rd_channels = spec.se_chs
        self.conv_pwl.active_out_channels = spec.out_chs
        self.use_shortcut_conv = spec.in_chs != spec.out_chs
        if self.use_shortcut_conv:
            self.shortcut.conv.active_out_channels = spec.out_chs
        self.identity_shortcut = spec.stride == 1 and spec.in_chs == spec.out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        shortcut = self.shortcut.pool(x)
        if self.use_shortcut_conv:
            shortcut = self.shortcut.conv(shortcut)
        if self.use_pw:
            x = self.conv_pw(x)
            x = self.bn1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        if self.drop_path_enabled and self.identity_shortcut:
            x = self.drop_path(x)
        return x + shortcut


class DynamicConvBnAct(ConvBnAct):
    """The head's 1x1 expansion conv + BN + act; its out-width is set per subnet."""
    conv_layer = DynamicConv2d
    norm_act_layer = DynamicBatchNormAct2d
