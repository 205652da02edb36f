"""The AlphaNet weight-sharing supernet as a timm model (`alphanet_supernet`).

Every layer stores its largest tensors; the active subnet's widths, kernel sizes, expand ratios and
depths are slices chosen by `set_subnet`. The state-dict keys are those of the largest static subnet
(plus the first-block shortcut convs a smaller subnet may need), so `extract_subnet` is a generic crop.
The caller feeds images at the subnet's resolution: nothing is resized inside forward.
"""
import contextlib
import random
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ..archs import ArchSpec, SpaceSpec, resolve_arch, resolve_space
from ..cost.flops import count_macs_and_params
from ..spaces import SubnetConfig
from ..layers.dynamic import DynamicBatchNormAct2d, DynamicConv2d, DynamicLinear
from ..layers.dynamic_blocks import DynamicConvBnAct, DynamicMBConv, DynamicStage
from ._supernet import SUBNET_KINDS, sample_from_space
from .alphanet import AlphaNet, _cfg, build_alphanet

__all__ = ['AlphaNetSupernet', 'SUBNET_KINDS']


class AlphaNetSupernet(AlphaNet):
    """Weight-sharing supernet over a `SearchSpace`; a fresh one runs its max subnet.

    Args:
        space: the search space (SearchSpace, its `supernet_config` dict, or a path to an original YAML).
        drop_path_stages: drop path (when enabled) only in the last this-many stages, as the original
            recipe does; None or a number >= the stage count = every stage (timm.create_model drops None kwargs).
        **kwargs: as AlphaNet (num_classes, in_chans, drop_rate, drop_path_rate, global_pool, bn_momentum, ...).
    """
    conv_layer = DynamicConv2d
    norm_act_layer = DynamicBatchNormAct2d
    linear_layer = DynamicLinear
    block_layer = DynamicMBConv
    stage_layer = DynamicStage
    head_block_layer = DynamicConvBnAct

    def __init__(self, space: SpaceSpec = None,
                 drop_path_stages: Optional[int] = 2, **kwargs):
        space = resolve_space(space)
        if 'arch' in kwargs:
            raise ValueError('alphanet_supernet takes no arch: it runs any subnet of its space (see set_subnet)')
        super().__init__(arch=space.max_config(), space=space, **kwargs)
        self.conv_stem.elastic_in = False  # the image's channels are fixed: a wrong count must fail, not be sliced
        self.max_drop_rate = self.drop_rate
        self.drop_rate = 0.  # dropout and drop path only when switched on (see `regularized`)
        if drop_path_stages is not None:
            for stage in list(self.blocks)[:-1][:max(0, self.space.num_stages - drop_path_stages)]:
                for block in stage:
                    block.drop_path = nn.Identity()
        self.set_subnet(self.arch)

    def _storage_arch(self) -> SubnetConfig:
        return self.space.max_config()

    def _shortcut_conv(self, stage_idx: int, block_idx: int) -> Optional[bool]:
        # only a stage's first block can change width, and it must store a conv if any subnet does
        return block_idx == 0 and self.space.first_block_needs_shortcut_conv()[stage_idx]

    @torch.jit.ignore
    def _active_blocks(self, stage: nn.Module) -> List[nn.Module]:
        return list(stage)[:stage.depth] if isinstance(stage, DynamicStage) else list(stage)

    @property
    @torch.jit.unused
    def active_subnet(self) -> SubnetConfig:
        """The subnet that forward runs."""
        return self.arch

    @torch.jit.ignore
    def set_subnet(self, arch: ArchSpec) -> None:
        """Run `arch` (a SubnetConfig, an original-style dict, or a name such as 'min' or 'a3'), validated against
        the space."""
        arch = resolve_arch(arch, self.space)
        self.conv_stem.active_out_channels = arch.widths[0]
        for stage, specs in zip(self.blocks, self.space.block_specs(arch)):  # the head stage is not elastic
            stage.depth = len(specs)  # blocks past the depth keep their settings: they do not run
            for block, spec in zip(stage, specs):
                block.set_active(spec)
        head = self.blocks[-1][0]
        head.conv.active_out_channels = arch.widths[-2] * self.space.head_expand_ratio
        self.conv_head.active_out_channels = arch.widths[-1]
        self.arch = arch

    @torch.jit.ignore
    def sample_subnet(self, kind: str, rng: Optional[random.Random] = None) -> SubnetConfig:
        """'max', 'min' or 'random' (needs an explicit `rng`) subnet of the space; the active one is unchanged."""
        return sample_from_space(self.space, kind, rng)

    @torch.jit.ignore
    def macs_and_params(self, arch: Optional[ArchSpec] = None, num_classes: Optional[int] = None) -> Tuple[int, int]:
        """(MACs, parameters) of `arch` (default: the active subnet) counted from the space's block specs, with this
        model's input channels and classes (or `num_classes`); see `cost.flops`."""
        arch = self.arch if arch is None else arch
        return count_macs_and_params(arch, self.space, self.num_classes if num_classes is None else num_classes,
                                     self.in_chans)

    @torch.jit.ignore
    @contextlib.contextmanager
    def regularized(self, drop_rate: Optional[float] = None, drop_path: bool = True) -> Iterator[None]:
        """Within the block, forward applies dropout (`drop_rate`, default the model's) and drop path.

        The original recipe regularizes only the max subnet, so both are off by default.
        """
        old = self.drop_rate
        self.drop_rate = self.max_drop_rate if drop_rate is None else drop_rate
        blocks = [b for stage in self.blocks for b in stage if isinstance(b, DynamicMBConv)]  # not all ~1000 modules
        for b in blocks:
            b.set_drop_path(drop_path)
        try:
            yield
        finally:
            self.drop_rate = old
            for b in blocks:
                b.set_drop_path(False)


def _create_supernet(variant: str, pretrained: bool = False, **kwargs) -> AlphaNetSupernet:
    return build_alphanet(AlphaNetSupernet, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    'alphanet_supernet': _cfg(input_size=(3, 288, 288), pool_size=(9, 9)),
})


@register_model
def alphanet_supernet(pretrained: bool = False, **kwargs) -> AlphaNetSupernet:
    """AlphaNet weight-sharing supernet; `space=` a SearchSpace, its dict or an original YAML path."""
    return _create_supernet('alphanet_supernet', pretrained, **kwargs)
