"""Elastic versions of the AlphaNet blocks: the static blocks built from elastic layers at max size.

There is one block forward, `MBConv.forward`. An elastic block only sets its layers' active sizes and switches
(`set_active`): the expansion conv and a shortcut conv switch off (pass their input through) where the subnet's
block has none, and drop path is live only where the active shortcut is the identity and only inside
`AlphaNetSupernet.regularized()`. Elastic depth is the stage's: a `DynamicStage` runs its first `depth` blocks.
"""
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import DropPath

from ..spaces import BlockSpec
from .blocks import ConvBnAct, MBConv
from .dynamic import DynamicBatchNormAct2d, DynamicConv2d, DynamicSqueezeExcite

__all__ = ['DynamicMBConv', 'DynamicConvBnAct', 'DynamicStage']


class DynamicMBConv(MBConv):
    """MBConv storing its max-size tensors; width, kernel and expand ratio are set per subnet by `set_active`."""
    conv_layer = DynamicConv2d
    norm_act_layer = DynamicBatchNormAct2d
    se_layer = DynamicSqueezeExcite

    def __init__(self, spec: BlockSpec, drop_path_rate: float = 0., bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 shortcut_conv: Optional[bool] = None, device=None, dtype=None):
        super().__init__(spec, drop_path_rate, bn_momentum, bn_eps, shortcut_conv, device=device, dtype=dtype)
        self.max_spec = spec
        self.drop_path_rate = float(drop_path_rate)
        self.drop_path_enabled = False
        self.identity_shortcut = True
        self.set_active(spec)

    @staticmethod
    def _drop_path_allowed(spec: BlockSpec) -> bool:
        return True  # decided per subnet (`set_active`): only blocks whose active shortcut is the identity

    def set_active(self, spec: BlockSpec) -> None:
        """Configure the layers for one subnet's block `spec` (its widths must fit the stored max sizes)."""
        m = self._modules  # not nn.Module.__getattr__'s lookup: set_active runs for every block of every subnet
        expand = spec.expand_ratio != 1
        if isinstance(m['conv_pw'], DynamicConv2d):
            _set(m['conv_pw'], enabled=expand, active_out_channels=spec.mid_chs)
            _set(m['bn1'], enabled=expand)
        _set(m['conv_dw'], active_kernel_size=spec.kernel_size)
        if isinstance(m['se'], DynamicSqueezeExcite):
            _set(m['se'], active_rd_channels=spec.se_chs)
        _set(m['conv_pwl'], active_out_channels=spec.out_chs)
        shortcut_conv = m['shortcut']._modules['conv']
        if isinstance(shortcut_conv, DynamicConv2d):
            _set(shortcut_conv, enabled=spec.in_chs != spec.out_chs, active_out_channels=spec.out_chs)
        _set(self, identity_shortcut=spec.stride == 1 and spec.in_chs == spec.out_chs)
        self._update_drop_path()

    def set_drop_path(self, enabled: bool) -> None:
        """Switch drop path on (at this block's rate, if its active shortcut is the identity) or off."""
        _set(self, drop_path_enabled=enabled)
        self._update_drop_path()

    def _update_drop_path(self) -> None:
        # timm's DropPath passes its input through at drop_prob 0: the switch is its rate, not a forward branch
        drop_path = self._modules['drop_path']
        if isinstance(drop_path, DropPath):
            on = self.drop_path_enabled and self.identity_shortcut
            _set(drop_path, drop_prob=self.drop_path_rate if on else 0.)


def _set(module: nn.Module, **values) -> None:
    """Write plain (int, bool, float) attributes that `module` already has. nn.Module.__setattr__ first checks
    whether each value is a parameter, buffer or module (about 25 us a write): a subnet switch writes ~200 of them,
    five times per sandwich step."""
    module.__dict__.update(values)


class DynamicConvBnAct(ConvBnAct):
    """The head's 1x1 expansion conv + BN + act; its out-width is set per subnet."""
    conv_layer = DynamicConv2d
    norm_act_layer = DynamicBatchNormAct2d


class DynamicStage(nn.Sequential):
    """A stage of elastic blocks that runs only its first `depth` blocks (elastic depth; the rest keep their
    tensors, which is what keeps the state-dict keys those of the largest subnet)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.depth = len(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self):
            if i < self.depth:
                x = block(x)
        return x
