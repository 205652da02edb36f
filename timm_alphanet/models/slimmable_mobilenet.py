"""Slimmable MobileNet-V1 / V2: timm's own `mobilenetv1_100` / `mobilenetv2_100` with elastic layers.

Slimmable networks (Yu et al., arXiv:1812.08928; universally slimmable, arXiv:1903.05134) run one network at
many width multipliers; AlphaNet (arXiv:2102.07954) trains them with the sandwich rule and in-place
alpha-divergence distillation. Here the supernet IS timm's full-width model with its layers swapped for the
dynamic ones (`make_elastic`), so its state-dict keys and shapes are exactly timm's, `pretrained=True` starts
from timm's own weights, and a subnet is a leading slice of every tensor. The channel counts of each width are
read from timm's static model of that width (built on the meta device), so they follow timm's rounding and no
second formula. A subnet extracts into timm's registered model of its width (`mobilenetv2_050`, ...), loadable
without this package, or else into `slimmable_mobilenetv{1,2}_custom(width=...)`.
"""
import contextlib
import functools
import math
import random
import reprlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub.errors import HfHubHTTPError
from timm.layers import DropPath
from timm.models import generate_default_cfgs, get_pretrained_cfg, is_model, register_model
from timm.models import build_model_with_cfg
# timm's private generators are the one source of the MobileNet layouts and their channel rounding
from timm.models.efficientnet import EfficientNet, _gen_mobilenet_v1, _gen_mobilenet_v2

from ..cost.slimmable import width_macs_and_params
from ..layers.elastic import elastic_convs, make_elastic
from ..spaces import WidthConfig, WidthSpace, check_width, width_range
from ._checkpoint import checkpoint_filter_fn
from ._supernet import sample_from_space

__all__ = ['SlimmableMobileNet', 'SLIMMABLE_FAMILIES', 'SlimmableFamily', 'checkpoint_filter_fn',
           'timm_model_name', 'width_shapes']

Shapes = Tuple[Tuple[str, Tuple[int, ...]], ...]
# arguments of timm's generators and EfficientNet that change which layers exist or how wide they are
_LAYOUT_ARGS = ('channel_multiplier', 'depth_multiplier', 'group_size', 'fix_stem_head', 'head_conv', 'block_args',
                'round_chs_fn', 'stem_size', 'fix_stem', 'num_features', 'stem_kernel_size', 'output_stride',
                'pad_type', 'se_layer', 'aa_layer')


@dataclass(frozen=True)
class SlimmableFamily:
    """A timm model family whose width multiplier is elastic.

    Attributes:
        name: timm's family prefix ('mobilenetv2'); its models are named ``<name>_<width x 100, 3 digits>``.
        generator: timm's builder ``generator(variant, channel_multiplier, pretrained=False, **kwargs)``.
        timm_weights: timm's pretrained tag of the full-width model, the supernet's ``pretrained=True`` start.
        widths: The default width space (the paper's range, step 0.05).
    """
    name: str
    generator: Callable[..., EfficientNet]
    timm_weights: str
    widths: Tuple[float, ...]

    @property
    def full(self) -> str:
        """timm's full-width model, whose keys and shapes the supernet stores."""
        return f'{self.name}_100'


SLIMMABLE_FAMILIES: Dict[str, SlimmableFamily] = {
    'mobilenetv1': SlimmableFamily('mobilenetv1', _gen_mobilenet_v1, 'mobilenetv1_100.ra4_e3600_r224_in1k',
                                   width_range(0.25, 1.0)),
    'mobilenetv2': SlimmableFamily('mobilenetv2', _gen_mobilenet_v2, 'mobilenetv2_100.ra_in1k',
                                   width_range(0.35, 1.0)),
}


def _family(name: str) -> SlimmableFamily:
    if name not in SLIMMABLE_FAMILIES:
        raise ValueError(f'unknown slimmable family {reprlib.repr(name)}; allowed: {list(SLIMMABLE_FAMILIES)}')
    return SLIMMABLE_FAMILIES[name]


def _shapes(model: nn.Module) -> Shapes:
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


@functools.lru_cache(maxsize=None)
def width_shapes(family: str, width: float) -> Shapes:
    """(key, shape) of every state-dict entry of timm's static `family` model at `width` (1000 classes, RGB).

    Built on the meta device (no memory, no init), so the channel counts are timm's own rounding; the global RNG is
    left as it was (a cached and an uncached call must not give the next model different initial weights).
    """
    fam = _family(family)
    with torch.random.fork_rng(devices=[]):  # timm's init draws from the CPU RNG even on meta: leave it untouched
        return _shapes(fam.generator(fam.full, check_width(width), device='meta'))


@functools.lru_cache(maxsize=None)
def timm_model_name(family: str, width: float) -> Optional[str]:
    """timm's registered model of `family` at `width` (e.g. 'mobilenetv2_050'), or None where timm has none.

    A name only counts if timm's model has exactly the shapes of that width (so 'mobilenetv1_100h', with its extra
    head conv, or a depth-multiplied variant never stands in for a plain width).
    """
    name = f'{family}_{round(check_width(width) * 100):03d}'
    if not is_model(name):
        return None
    with torch.random.fork_rng(devices=[]):  # as in width_shapes: a cached call must not move the CPU RNG
        shapes = _shapes(timm.create_model(name, device='meta'))
    return name if shapes == width_shapes(family, width) else None


def _width_channels(family: str, space: WidthSpace) -> Dict[float, Dict[str, int]]:
    """Per width, the output channels of each dense conv (by module name); checks the widths are usable."""
    full = dict(width_shapes(family, 1.0))
    seen: Dict[Shapes, float] = {}
    out = {}
    for w in space.widths:
        if w > 1.0:
            raise ValueError(f'width {w} is wider than the stored model ({_family(family).full}, width 1.0); allowed '
                             f'widths are in (0, 1.0]')
        shapes = width_shapes(family, w)
        if shapes in seen:
            convs = sorted({s[0] for k, s in shapes if k.endswith('weight') and len(s) == 4})
            raise ValueError(f'widths {seen[shapes]} and {w} give the same channel counts in timm\'s {family} '
                             f'rounding (conv widths {convs}); keep only one of them in the width list')
        seen[shapes] = w
        # timm's rounding is monotonic, so every width fits in the stored full-width tensors
        assert all(a <= b for k, s in shapes for a, b in zip(s, full[k])), f'width {w} exceeds the stored tensors'
        out[w] = {k[:-len('.weight')]: s[0] for k, s in shapes if k.endswith('.weight') and len(s) == 4}
    return out


class SlimmableMobileNet(EfficientNet):
    """timm's MobileNet (an `EfficientNet`) at full width, running one width of its `space` at a time.

    A `Supernet`: `set_subnet(WidthConfig | dict | width)`, `active_subnet`, `sample_subnet(kind, rng)`,
    `regularized()` (dropout and drop path only inside it: the recipe regularizes the widest subnet only) and
    `static_model_for(arch)` (the unweighted timm model a subnet extracts into). A fresh model runs its max width.
    `num_features`, `feature_info` and `reset_classifier` describe the stored full width; forward runs the active one.

    Args:
        family: 'mobilenetv1' or 'mobilenetv2' (see `SLIMMABLE_FAMILIES`).
        space: A `WidthSpace` or its dict; default: the family's widths (V1 0.25-1.0, V2 0.35-1.0, step 0.05), 224px.
        **kwargs: timm's model arguments (num_classes, in_chans, drop_rate, drop_path_rate, global_pool, bn_momentum,
            bn_eps, device, dtype, ...), passed to timm's generator of the full-width model.
    """

    def __init__(self, family: str = 'mobilenetv2', space: Optional[Union[WidthSpace, Mapping[str, Any]]] = None,
                 **kwargs):
        fam = _family(family)
        layout = sorted(k for k in kwargs if k in _LAYOUT_ARGS)
        if layout:  # the per-width channel counts are those of timm's default layout
            raise ValueError(f'slimmable {family} keeps timm\'s default layout; {layout} not supported (they are for '
                             f'timm\'s static models, e.g. slimmable_{family}_custom)')
        space = WidthSpace(fam.widths) if space is None else WidthSpace.coerce(space)
        channels = _width_channels(family, space)
        # timm's generator returns a built EfficientNet; its whole state is its __dict__ (modules, parameters,
        # buffers, attributes), which this instance takes over instead of re-declaring the architecture
        static = fam.generator(fam.full, 1.0, **kwargs)
        nn.Module.__init__(self)
        self.__dict__.update(static.__dict__)
        make_elastic(self)
        self.family = family
        self.space = space
        self._channels = channels
        self.max_drop_rate = self.drop_rate
        self.drop_rate = 0.  # dropout and drop path only when switched on (see `regularized`)
        self._drop_path_rates = {n: m.drop_prob for n, m in self.named_modules() if isinstance(m, DropPath)}
        self._set_drop_path(False)
        self.arch = space.max_config()
        self.set_subnet(self.arch)

    @property
    @torch.jit.unused
    def active_subnet(self) -> WidthConfig:
        """The subnet that forward runs."""
        return self.arch

    @torch.jit.ignore
    def set_subnet(self, arch: Union[WidthConfig, Mapping[str, Any], float]) -> None:
        """Run `arch` (a WidthConfig, its dict, or a bare width when the space has one resolution)."""
        arch = self.space.validate(arch)
        channels = self._channels[arch.width]
        for name, conv in elastic_convs(self).items():
            conv.active_out_channels = channels[name]
        self.arch = arch

    @torch.jit.ignore
    def sample_subnet(self, kind: str, rng: Optional[random.Random] = None) -> WidthConfig:
        """'max', 'min' or 'random' (needs an explicit `rng`) subnet of the space; the active one is unchanged."""
        return sample_from_space(self.space, kind, rng)

    @torch.jit.ignore
    def macs_and_params(self, arch: Optional[Union[WidthConfig, Mapping[str, Any], float]] = None,
                        num_classes: Optional[int] = None) -> Tuple[int, int]:
        """(MACs, parameters) of `arch` (default: the active subnet), counted on its static timm model (built on the
        meta device) with this model's input channels and classes (or `num_classes`); see `cost.slimmable`."""
        return width_macs_and_params(self, arch, num_classes)

    def _set_drop_path(self, enabled: bool) -> None:
        for name, module in self.named_modules():
            if isinstance(module, DropPath):
                module.drop_prob = self._drop_path_rates[name] if enabled else 0.

    @torch.jit.ignore
    @contextlib.contextmanager
    def regularized(self, drop_rate: Optional[float] = None, drop_path: bool = True) -> Iterator[None]:
        """Within the block, forward applies dropout (`drop_rate`, default the model's) and drop path."""
        old = self.drop_rate
        self.drop_rate = self.max_drop_rate if drop_rate is None else drop_rate
        self._set_drop_path(drop_path)
        try:
            yield
        finally:
            self.drop_rate = old
            self._set_drop_path(False)

    @torch.jit.ignore
    def reset_classifier(self, num_classes: int, global_pool: str = 'avg') -> None:
        """timm's reset, with the new classifier elastic too (its input width follows the active subnet)."""
        super().reset_classifier(num_classes, global_pool)
        make_elastic(self)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False, extra_blocks: bool = False,
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's `forward_intermediates`, with a ValueError (not an assert) for an unsupported `output_fmt`."""
        if output_fmt != 'NCHW':
            raise ValueError(f'output_fmt {output_fmt!r:.20} is not supported; allowed: [\'NCHW\']')
        return super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only,
                                             extra_blocks)

    @torch.jit.ignore
    def static_model_for(self, arch: Optional[Union[WidthConfig, Mapping[str, Any], float]] = None,
                         **kwargs) -> nn.Module:
        """The unweighted static timm model with the shapes of subnet `arch` (default: the active one).

        timm's own registered model of that width where there is one (e.g. 'mobilenetv2_050', loadable without
        this package), else `slimmable_<family>_custom` with ``width`` in its model args (so ``local-dir:`` and
        ``hf-hub:`` rebuild it). Same classes, input channels, device and dtype as the supernet unless `kwargs`
        (``timm.create_model`` arguments) say otherwise; a subnet resolution other than the supernet's default
        input size is written into the model's pretrained cfg.
        """
        arch = self.active_subnet if arch is None else self.space.validate(arch)
        ref = self.conv_stem.weight
        kwargs = {'num_classes': self.num_classes, 'in_chans': self.in_chans, 'device': ref.device,
                  'dtype': ref.dtype, **kwargs}
        cfg = getattr(self, 'pretrained_cfg', None) or {}
        if tuple(cfg.get('input_size', ()))[-1:] != (arch.resolution,):
            r = arch.resolution
            kwargs.setdefault('pretrained_cfg_overlay', dict(
                input_size=(kwargs['in_chans'], r, r), pool_size=(math.ceil(r / 32),) * 2, test_input_size=None,
                test_crop_pct=None))
        name = timm_model_name(self.family, arch.width)
        if name is None:
            return timm.create_model(f'slimmable_{self.family}_custom', width=arch.width, **kwargs)
        return timm.create_model(name, **kwargs)


def _hub_error(variant: str, pretrained_cfg: Any, error: Exception) -> RuntimeError:
    hub_id = getattr(pretrained_cfg, 'hf_hub_id', None) or (pretrained_cfg or {}).get('hf_hub_id')
    return RuntimeError(
        f'could not load pretrained weights for {variant!r} ({hub_id}): {error}\n'
        f'pretrained=True starts the supernet from timm\'s own full-width weights ({hub_id} on the Hugging Face '
        'Hub): download them once while online (they are cached), pass pretrained_cfg_overlay=dict(file=<weights '
        'file>), or use pretrained=False.')


def _create_slimmable(variant: str, family: str, pretrained: bool = False, **kwargs) -> SlimmableMobileNet:
    if kwargs.get('space') is not None:  # JSON-able so timm records it in model_args / config.json
        kwargs['space'] = WidthSpace.coerce(kwargs['space']).to_dict()
    try:
        return build_model_with_cfg(
            SlimmableMobileNet, variant, pretrained, family=family,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(flatten_sequential=True),
            **kwargs,
        )
    except (OSError, HfHubHTTPError) as e:
        if not pretrained:
            raise
        raise _hub_error(variant, default_cfgs[variant].default, e) from e


def _create_static(variant: str, family: str, width: float, pretrained: bool = False, **kwargs) -> EfficientNet:
    # timm's own generator under our name, so the pretrained cfg (and config.json) name this entry point
    return _family(family).generator(variant, check_width(width), pretrained=pretrained,
                                     pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _cfg(family: str, weights: bool, **kwargs) -> Dict[str, Any]:
    """timm's own pretrained cfg of the family's full-width weights; without `weights`, only the preprocessing."""
    cfg = get_pretrained_cfg(_family(family).timm_weights).to_dict()
    hub_id = cfg.pop('hf_hub_id')
    for k in ('architecture', 'tag', 'url'):
        cfg.pop(k, None)
    if weights:
        cfg['hf_hub_id'] = hub_id
    cfg.update(paper_ids='arXiv:2102.07954', **kwargs)
    return cfg


default_cfgs = generate_default_cfgs({  # must precede @register_model: the registry reads it at decoration
    'slimmable_mobilenetv1_100.ra4_e3600_r224_in1k': _cfg(
        'mobilenetv1', True, description="Slimmable MobileNet-V1 (widths 0.25-1.0) starting from timm's "
        'mobilenetv1_100.ra4_e3600_r224_in1k weights (one width)'),
    'slimmable_mobilenetv2_100.ra_in1k': _cfg(
        'mobilenetv2', True, description="Slimmable MobileNet-V2 (widths 0.35-1.0) starting from timm's "
        'mobilenetv2_100.ra_in1k weights (one width)'),
    'slimmable_mobilenetv1_custom': _cfg('mobilenetv1', False),
    'slimmable_mobilenetv2_custom': _cfg('mobilenetv2', False),
})


@register_model
def slimmable_mobilenetv1_100(pretrained: bool = False, **kwargs) -> SlimmableMobileNet:
    """Slimmable MobileNet-V1 over widths 0.25-1.0 (`space=` for others); keys are timm's mobilenetv1_100."""
    return _create_slimmable('slimmable_mobilenetv1_100', 'mobilenetv1', pretrained, **kwargs)


@register_model
def slimmable_mobilenetv2_100(pretrained: bool = False, **kwargs) -> SlimmableMobileNet:
    """Slimmable MobileNet-V2 over widths 0.35-1.0 (`space=` for others); keys are timm's mobilenetv2_100."""
    return _create_slimmable('slimmable_mobilenetv2_100', 'mobilenetv2', pretrained, **kwargs)


@register_model
def slimmable_mobilenetv1_custom(pretrained: bool = False, width: float = 1.0, **kwargs) -> EfficientNet:
    """timm's static MobileNet-V1 at any `width`: what a slimmable subnet of a width timm does not register becomes."""
    return _create_static('slimmable_mobilenetv1_custom', 'mobilenetv1', width, pretrained, **kwargs)


@register_model
def slimmable_mobilenetv2_custom(pretrained: bool = False, width: float = 1.0, **kwargs) -> EfficientNet:
    """timm's static MobileNet-V2 at any `width`: what a slimmable subnet of a width timm does not register becomes."""
    return _create_static('slimmable_mobilenetv2_custom', 'mobilenetv2', width, pretrained, **kwargs)
