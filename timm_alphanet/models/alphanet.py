"""AlphaNet static models for timm.

Paper: `AlphaNet: Improved Training of Supernets with Alpha-Divergence` - https://arxiv.org/abs/2102.07954
Search space and blocks from `AttentiveNAS` - https://arxiv.org/abs/2011.09011

The architecture (and the published weights) derive from work released under CC-BY-NC-4.0.
"""
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub.errors import HfHubHTTPError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import BatchNormAct2d, Linear, SelectAdaptivePool2d
from timm.models import (build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model,
                         register_notrace_function)
from timm.models._features import feature_take_indices

from ..archs import ALPHANET_ARCHS, ALPHANET_TOP1, ArchSpec, SpaceSpec, resolve_arch, resolve_space
from ..spaces import SubnetConfig
from ..utils import as_float, as_int, display_path
from ..utils.model_dir import check_saved_model_args
from ..cost.flops import count_macs_and_params
from ..layers.blocks import ConvBnAct, MBConv, act_layer_for
from ._checkpoint import checkpoint_filter_fn

__all__ = ['AlphaNet', 'HF_HUB_ORG', 'PretrainedWeightsError', 'WEIGHTS_HELP']

# every published weight lives under this Hugging Face organisation; mirrors and forks set TIMM_ALPHANET_HF_ORG
# before the import (read once: the registry's hf_hub_ids are fixed when the models register)
HF_HUB_ORG = os.environ.get('TIMM_ALPHANET_HF_ORG') or 'timm-alphanet'
if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]{0,95}', HF_HUB_ORG):
    raise ValueError(f'TIMM_ALPHANET_HF_ORG={HF_HUB_ORG[:100]!r} is not a Hugging Face organisation name '
                     '(letters, digits, ".", "_", "-")')
# short: it ends a one-line error. The original checkpoint is the one the AlphaNet repository's README links
WEIGHTS_HELP = (
    'Not yet published at https://huggingface.co/' + HF_HUB_ORG + '; convert the original checkpoint (linked from '
    'https://github.com/facebookresearch/AlphaNet): '
    "`alphanet-convert CKPT.pth.tar --out converted`, then 'local-dir:converted/alphanet_a0' (README: Pretrained "
    'weights).')


class PretrainedWeightsError(RuntimeError, ValueError):
    """The pretrained weights of an AlphaNet model could not be loaded; the message names the Hub repository
    tried and how to get working weights. A ValueError too, so command-line tools report it in one line."""


@register_notrace_function  # an fx leaf; it returns `x` so that traced graphs keep the check
def check_input_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """`x` itself if it is a batch of `in_chans`-channel images; a ValueError naming both counts otherwise."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f'the model takes (batch, {in_chans}, height, width) images (in_chans={in_chans}), '
                         f'got an input of shape {list(x.shape)}')
    return x


class AlphaNet(nn.Module):
    """A static AlphaNet subnet as a timm model.

    Args:
        arch: the subnet: a SubnetConfig, a dict with our or the original keys, or what else `resolve_arch` takes.
        space: the search space the arch belongs to (SearchSpace, its `supernet_config` dict or an original YAML
            path); None = AlphaNet's.
        num_classes: classifier outputs (0 = no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, scaled linearly with block index, on identity-shortcut blocks.
        global_pool: timm pooling type ('' = no pooling).
        bn_momentum, bn_eps: BatchNorm settings.
    """
    # layer classes: the supernet swaps in elastic versions that store the same tensors at max size
    conv_layer = nn.Conv2d
    norm_act_layer = BatchNormAct2d
    linear_layer = Linear
    block_layer = MBConv
    stage_layer = nn.Sequential
    head_block_layer = ConvBnAct

    def __init__(
            self,
            arch: ArchSpec,
            space: SpaceSpec = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            global_pool: str = 'avg',
            bn_momentum: float = 0.1,
            bn_eps: float = 1e-5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_classes = as_int('num_classes', num_classes, 0)
        in_chans = as_int('in_chans', in_chans, 1)
        drop_rate = as_float('drop_rate', drop_rate, 0., 1., high_open=True)
        drop_path_rate = as_float('drop_path_rate', drop_path_rate, 0., 1., high_open=True)
        self.space = resolve_space(space)
        self.arch = resolve_arch(arch, self.space)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        bn = dict(momentum=bn_momentum, eps=bn_eps)
        storage = self._storage_arch()
        specs = self.space.block_specs(storage)

        # Stem
        stem_chs = storage.widths[0]
        self.conv_stem = self.conv_layer(in_chans, stem_chs, 3, self.space.stem_stride, 1, bias=False, **dd)
        self.bn1 = self.norm_act_layer(stem_chs, act_layer=act_layer_for(self.space.stem_act), **bn, **dd)
        self.feature_info = []

        # Middle stages, then the head's expansion conv as a final stage (as in timm's MobileNetV3)
        num_blocks = sum(len(s) for s in specs)
        stages, block_idx, reduction = [], 0, self.space.stem_stride
        for si, stage_specs in enumerate(specs):
            blocks = []
            for j, spec in enumerate(stage_specs):
                dpr = drop_path_rate * block_idx / num_blocks
                blocks.append(self.block_layer(spec, drop_path_rate=dpr, bn_momentum=bn_momentum, bn_eps=bn_eps,
                                               shortcut_conv=self._shortcut_conv(si, j), **dd))
                block_idx += 1
            stages.append(self.stage_layer(*blocks))
            next_stride = self.space.stages[si + 1].stride if si + 1 < len(specs) else 1
            reduction *= self.space.stages[si].stride
            if next_stride > 1:  # last stage at this resolution: a feature level
                self.feature_info.append(dict(num_chs=storage.widths[si + 1], reduction=reduction, module=f'blocks.{si}'))
        last_chs = storage.widths[-2]
        self.num_features = last_chs * self.space.head_expand_ratio
        head_act = act_layer_for(self.space.head_act)
        stages.append(nn.Sequential(
            self.head_block_layer(last_chs, self.num_features, head_act, bn_momentum, bn_eps, **dd)))
        self.feature_info.append(dict(num_chs=self.num_features, reduction=reduction, module=f'blocks.{len(specs)}'))
        self.blocks = nn.Sequential(*stages)
        self.stage_ends = [int(info['module'].split('.')[-1]) for info in self.feature_info]

        # Head + pooling: pool -> 1x1 conv (no BN, no bias) -> act -> dropout -> linear
        self.head_hidden_size = storage.widths[-1]
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = self.conv_layer(self.num_features, self.head_hidden_size, 1, bias=False, **dd)
        self.act2 = head_act(inplace=True)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()  # don't flatten if pooling disabled
        self.classifier = self.linear_layer(self.head_hidden_size, num_classes, **dd) \
            if num_classes > 0 else nn.Identity()

    def _storage_arch(self) -> SubnetConfig:
        """The arch whose tensors this model stores (the supernet stores its max subnet)."""
        return self.arch

    def _shortcut_conv(self, stage_idx: int, block_idx: int) -> Optional[bool]:
        """Whether block `block_idx` of stage `stage_idx` stores a 1x1 shortcut conv; None = iff its width changes."""
        return None

    @torch.jit.ignore
    def _active_blocks(self, stage: nn.Module) -> List[nn.Module]:
        """The blocks of `stage` that forward runs, for gradient checkpointing (the supernet: its active depth)."""
        return list(stage)

    @torch.jit.ignore
    def _all_active_blocks(self) -> List[nn.Module]:
        return [block for stage in self.blocks for block in self._active_blocks(stage)]

    @property
    @torch.jit.unused
    def mflops(self) -> float:
        """MACs of this subnet in millions, by the original counter's convention (at its own resolution)."""
        return count_macs_and_params(self.arch, self.space, num_classes=self.num_classes, in_chans=self.in_chans)[0] / 1e6

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv_stem|bn1',
            blocks=r'^blocks\.(\d+)' if coarse else r'^blocks\.(\d+)\.(\d+)',
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        ref = self.conv_head.weight if isinstance(self.conv_head, nn.Conv2d) else self.conv_stem.weight
        self.classifier = self.linear_layer(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype) \
            if num_classes > 0 else nn.Identity()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that also returns the feature maps at `feature_info` levels.

        Args:
            x: input images.
            indices: take the last n levels if int, all if None, or the listed level indices.
            norm: unused (no final norm layer in this model).
            stop_early: stop after the last requested level (needs intermediates_only).
            output_fmt: only 'NCHW'.
            intermediates_only: return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt {output_fmt!r:.40} not supported; allowed: ['NCHW']")
        if stop_early and not intermediates_only:
            raise ValueError('stop_early=True requires intermediates_only=True')
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        take_indices = [self.stage_ends[i] for i in take_indices]
        max_index = self.stage_ends[max_index]

        x = check_input_channels(x, self.in_chans)
        x = self.conv_stem(x)
        x = self.bn1(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.blocks
        else:
            stages = self.blocks[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(self._active_blocks(stage), x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)

        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Remove the layers not needed for the requested intermediates; returns the kept level indices."""
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        num_chs = self.feature_info[max_index]['num_chs']
        max_index = self.stage_ends[max_index]
        self.blocks = self.blocks[:max_index + 1]
        if prune_head or max_index < self.stage_ends[-1]:
            # the head is sized for the final features, so it goes with any truncation
            self.num_features = self.head_hidden_size = num_chs
            self.conv_head = nn.Identity()
            self.act2 = nn.Identity()
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input_channels(x, self.in_chans)
        x = self.conv_stem(x)
        x = self.bn1(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self._all_active_blocks(), x)
        else:
            x = self.blocks(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.conv_head(x)
        x = self.act2(x)
        x = self.flatten(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _create_named(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> AlphaNet:
    """One of the paper's archs (`name` in ALPHANET_ARCHS); its arch is fixed, so an `arch=` is refused."""
    variant = f'alphanet_{name}'
    if 'arch' in kwargs:
        raise ValueError(f'{variant} has a fixed arch (AlphaNet-{name.upper()}); for another arch use '
                         f"timm.create_model('alphanet_custom', arch=...)")
    return _create_alphanet(variant, ALPHANET_ARCHS[name], pretrained, **kwargs)


def _create_alphanet(variant: str, arch: Union[SubnetConfig, Mapping[str, Any]], pretrained: bool = False,
                     **kwargs) -> AlphaNet:
    if isinstance(arch, SubnetConfig):
        arch = arch.to_dict()  # plain JSON-able kwargs so timm can record them in model_args / config.json
    return build_alphanet(AlphaNet, variant, pretrained, arch=dict(arch), **kwargs)


def check_source_args(kwargs: Mapping[str, Any]) -> None:
    """Refuse a `local-dir:` / `hf-hub:` config.json whose model_args name a file (`check_saved_model_args`).

    timm hands a saved config's model_args to the entrypoint as keyword arguments, indistinguishable from the
    caller's own, and records them in ``pretrained_model_args`` with the config's ``source`` and folder or repository
    in ``pretrained_cfg``: those, and only those, are checked here, before anything is read.
    """
    saved = kwargs.get('pretrained_model_args')
    cfg = kwargs.get('pretrained_cfg')
    cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg
    if saved is None or not isinstance(cfg, Mapping) or cfg.get('source') not in ('local-dir', 'hf-hub'):
        return
    if cfg.get('source') == 'local-dir':
        where = display_path(os.path.join(str(cfg.get('file') or '<folder>'), 'config.json'))
    else:
        where = f'hf-hub:{str(cfg.get("hf_hub_id"))[:200]} config.json'
    check_saved_model_args(saved, where)


def build_alphanet(cls: type, variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's `build_model_with_cfg` for AlphaNet model classes (static or supernet), with our checkpoint filter.

    A `space` kwarg is stored as its dict, so timm records it in model_args / config.json and `hf-hub:` /
    `local-dir:` can rebuild the model anywhere.
    """
    check_source_args(kwargs)
    if kwargs.get('space') is not None:
        kwargs['space'] = resolve_space(kwargs['space']).to_dict()
    try:
        return build_model_with_cfg(
            cls, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(flatten_sequential=True),
            **kwargs,
        )
    except (OSError, HfHubHTTPError) as e:
        if not pretrained:
            raise
        raise PretrainedWeightsError(_weights_error(variant, kwargs.get('pretrained_cfg_overlay'), e)) from e


def _weights_error(variant: str, overlay: Optional[Mapping[str, Any]], error: BaseException) -> str:
    """Why `variant`'s weights did not load, without the hub's generic "check your connection"."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    reason = ' '.join(str(error).split())[:200]
    if overlay and any(overlay.get(k) for k in ('file', 'url', 'state_dict')):  # the caller's own weights
        return f'could not load pretrained weights for {variant!r}: {reason}'
    repo = getattr(get_pretrained_cfg(variant, allow_unregistered=True), 'hf_hub_id', None) or 'none'
    how = ('HF_HUB_OFFLINE is set, so only the local cache was searched' if constants.HF_HUB_OFFLINE else
           f'the Hub answered: {reason}')
    return f'no pretrained weights for {variant!r} in the Hugging Face Hub repository {repo!r} ({how}). {WEIGHTS_HELP}'


def _cfg(name: str = '', **kwargs) -> Dict[str, Any]:
    """Pretrained cfg of a named AlphaNet arch: input size = its resolution, bicubic, crop_pct 0.875."""
    cfg = dict(
        url='', num_classes=1000, interpolation='bicubic', crop_pct=0.875, crop_mode='center',
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv='conv_stem', classifier='classifier',
        license='cc-by-nc-4.0', paper_ids='arXiv:2102.07954', paper_name='AlphaNet: Improved Training of Supernets '
        'with Alpha-Divergence', origin_url='https://github.com/facebookresearch/AlphaNet',
    )
    if name:
        arch = ALPHANET_ARCHS[name]
        res = arch.resolution
        macs, params = count_macs_and_params(arch)
        cfg.update(
            input_size=(3, res, res), pool_size=(math.ceil(res / 32),) * 2, hf_hub_id=f'{HF_HUB_ORG}/alphanet_{name}.in1k',
            description=f'AlphaNet-{name.upper()}: {res}px, {macs / 1e6:.2f} MFLOPs, {params / 1e6:.2f} M params, '
                        f'{ALPHANET_TOP1[name]:.2f}% ImageNet-1k top-1 (reported)',
        )
    cfg.update(kwargs)
    return cfg


default_cfgs = generate_default_cfgs({  # must precede @register_model: the registry reads it at decoration
    **{f'alphanet_{name}.in1k': _cfg(name) for name in ALPHANET_ARCHS},
    'alphanet_custom': _cfg(input_size=(3, 192, 192), pool_size=(6, 6)),  # default arch: the space's smallest
})


@register_model
def alphanet_a0(pretrained: bool = False, **kwargs) -> AlphaNet:
    """AlphaNet-A0, 192px, 203 MFLOPs (arXiv:2102.07954)."""
    return _create_named('a0', pretrained, kwargs)


@register_model
def alphanet_a1(pretrained: bool = False, **kwargs) -> AlphaNet:
    """AlphaNet-A1, 224px, 279 MFLOPs (arXiv:2102.07954)."""
    return _create_named('a1', pretrained, kwargs)


@register_model
def alphanet_a2(pretrained: bool = False, **kwargs) -> AlphaNet:
    """AlphaNet-A2, 224px, 317 MFLOPs (arXiv:2102.07954)."""
    return _create_named('a2', pretrained, kwargs)


@register_model
def alphanet_a3(pretrained: bool = False, **kwargs) -> AlphaNet:
    """AlphaNet-A3, 224px, 357 MFLOPs (arXiv:2102.07954)."""
    return _create_named('a3', pretrained, kwargs)


@register_model
def alphanet_a4(pretrained: bool = False, **kwargs) -> AlphaNet:
    """AlphaNet-A4, 256px, 444 MFLOPs (arXiv:2102.07954)."""
    return _create_named('a4', pretrained, kwargs)


@register_model
def alphanet_a5_small(pretrained: bool = False, **kwargs) -> AlphaNet:
    """AlphaNet-A5 (small), 256px, 491 MFLOPs (arXiv:2102.07954)."""
    return _create_named('a5_small', pretrained, kwargs)


@register_model
def alphanet_a5_base(pretrained: bool = False, **kwargs) -> AlphaNet:
    """AlphaNet-A5 (base), 288px, 596 MFLOPs (arXiv:2102.07954)."""
    return _create_named('a5_base', pretrained, kwargs)


@register_model
def alphanet_a6(pretrained: bool = False, **kwargs) -> AlphaNet:
    """AlphaNet-A6, 288px, 709 MFLOPs (arXiv:2102.07954)."""
    return _create_named('a6', pretrained, kwargs)


@register_model
def alphanet_custom(pretrained: bool = False, arch: Optional[ArchSpec] = None, **kwargs) -> AlphaNet:
    """Any AlphaNet subnet: `arch` of `space` (default: AlphaNet's); no arch = the space's smallest.

    `arch` is anything `timm_alphanet.archs.resolve_arch` takes: a dict or SubnetConfig, a name ('a3', 'max'), or a
    JSON/YAML arch file.
    """
    check_source_args(kwargs)  # before the space or arch a saved config names is read
    space = resolve_space(kwargs.get('space'))
    arch = space.min_config() if arch is None else resolve_arch(arch, space)
    res = arch.resolution
    overlay = dict(input_size=(3, res, res), pool_size=(math.ceil(res / 32),) * 2)
    kwargs['pretrained_cfg_overlay'] = {**overlay, **(kwargs.get('pretrained_cfg_overlay') or {})}
    return _create_alphanet('alphanet_custom', arch, pretrained, **kwargs)
