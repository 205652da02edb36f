"""`SearchSpace`: the set of AlphaNet architectures a supernet can run, in the original `supernet_config` schema.

It validates archs, gives the extremes, samples with an explicit RNG and resolves each block's shape
(`BlockSpec`, shared by the models and the cost model). It round-trips through plain dicts (JSON/YAML) in the
original schema (`c/d/k/t/s/se/act_func`). It follows the `Space` protocol (spaces/protocol.py). Nothing here
imports torch.
"""
from __future__ import annotations

import itertools
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import yaml

from ..utils import (
    bounded_repr, display_path, instance_or_mapping, int_tuple, plain_items, plain_number, read_yaml_file, short_message,
)
from .subnet import SubnetConfig

__all__ = ['StageSpace', 'SearchSpace', 'BlockSpec', 'make_divisible', 'ACTIVATIONS']

# original `act_func` names -> timm activation names
ACTIVATIONS = {'swish': 'silu', 'relu': 'relu', 'h_swish': 'hard_swish', 'relu6': 'relu6'}
STRIDES = (1, 2)  # a stage's 2x2 shortcut pooling (and the stem, for symmetry) supports these


def _check_choice(where: str, value: Any, allowed: Tuple[Any, ...]) -> Any:
    """`value` (numpy/torch scalars as Python numbers) if it is one of `allowed` and of the same type."""
    value = plain_number(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not any(type(value) is type(a) and value == a for a in allowed):
        raise ValueError(f'{where} {bounded_repr(value)} not supported; allowed: {list(allowed)}')
    return value


def _check_bool(where: str, value: Any) -> bool:
    # bool('false') is True: a string (or 0/1) where YAML should have given true/false is an error, not a guess
    if not isinstance(value, bool):
        raise ValueError(f'{where} must be true or false, got {bounded_repr(value)}')
    return value


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None, round_limit: float = 0.9) -> int:
    """Round `v` to the nearest multiple of `divisor`, never dropping below `round_limit * v`."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class StageSpace:
    """Choices of one MBConv stage."""
    name: str
    widths: Tuple[int, ...]
    depths: Tuple[int, ...]
    kernel_sizes: Tuple[int, ...]
    expand_ratios: Tuple[int, ...]
    stride: int = 1
    se: bool = False
    act: str = 'swish'

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f'a stage name must be a non-empty string, got {bounded_repr(self.name)}')
        where = f'stage {self.name[:40]}:'
        for f in ('widths', 'depths', 'kernel_sizes', 'expand_ratios'):
            v = int_tuple(f'{self.name[:40]}.{f}', plain_items(getattr(self, f)))
            if not v:
                raise ValueError(f'{where} {f} needs at least one choice')
            if min(v) < 1:
                raise ValueError(f'{where} {f} must be positive, got {bounded_repr(list(v))}')
            object.__setattr__(self, f, tuple(sorted(set(v))))
        bad_k = [k for k in self.kernel_sizes if k % 2 == 0]
        if bad_k:
            raise ValueError(f'{where} kernel sizes must be odd, got {bounded_repr(bad_k[0])}')
        object.__setattr__(self, 'stride', _check_choice(f'{where} stride', self.stride, STRIDES))
        object.__setattr__(self, 'act', _check_choice(f'{where} act_func', self.act, tuple(ACTIVATIONS)))
        object.__setattr__(self, 'se', _check_bool(f'{where} se', self.se))


@dataclass(frozen=True)
class BlockSpec:
    """Resolved shape of one MBConv block of a concrete subnet."""
    in_chs: int
    out_chs: int
    mid_chs: int
    kernel_size: int
    stride: int
    expand_ratio: int
    se_chs: int  # 0 = no SE
    act: str

    @property
    def has_shortcut_conv(self) -> bool:
        return self.in_chs != self.out_chs


@dataclass(frozen=True)
class SearchSpace:
    """An AlphaNet search space: stem, MBConv stages, head, and input resolutions."""
    resolutions: Tuple[int, ...]
    stem_widths: Tuple[int, ...]
    stages: Tuple[StageSpace, ...]
    head_widths: Tuple[int, ...]
    stem_stride: int = 2
    stem_act: str = 'swish'
    head_act: str = 'swish'
    head_expand_ratio: int = 6  # MobileNetV3 head: 1x1 conv to 6x the last stage width before pooling

    def __post_init__(self) -> None:
        for f in ('resolutions', 'stem_widths', 'head_widths'):
            v = int_tuple(f, plain_items(getattr(self, f)))
            if not v or min(v) < 1:
                raise ValueError(f'{f} needs at least one positive choice, got {bounded_repr(list(v))}')
            object.__setattr__(self, f, tuple(sorted(set(v))))
        stages = tuple(self.stages)
        if not stages or not all(isinstance(s, StageSpace) for s in stages):
            raise ValueError('stages must be a non-empty sequence of StageSpace')
        object.__setattr__(self, 'stages', stages)
        for a in ('stem_act', 'head_act'):
            object.__setattr__(self, a, _check_choice(a, getattr(self, a), tuple(ACTIVATIONS)))
        object.__setattr__(self, 'stem_stride', _check_choice('stem stride (first_conv.s)', self.stem_stride, STRIDES))
        ratio = plain_number(self.head_expand_ratio)
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
            raise ValueError(f'head_expand_ratio must be an int >= 1, got {bounded_repr(ratio)}')
        object.__setattr__(self, 'head_expand_ratio', ratio)

    # ---- basic properties
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def _choices(self, field_name: str) -> List[Tuple[int, ...]]:
        """Per-position choices for one SubnetConfig field."""
        if field_name == 'widths':
            return [self.stem_widths, *(s.widths for s in self.stages), self.head_widths]
        return [getattr(s, field_name) for s in self.stages]

    def _position_name(self, field_name: str, i: int) -> str:
        if field_name == 'widths':
            names = ['first_conv', *(s.name for s in self.stages), 'last_conv']
            return names[i]
        return self.stages[i].name

    # ---- configs
    def validate(self, cfg: Union[SubnetConfig, Mapping[str, Any]]) -> SubnetConfig:
        """Return `cfg` as a SubnetConfig, raising ValueError naming every value outside this space."""
        cfg = SubnetConfig.from_dict(cfg)
        if cfg.num_stages != self.num_stages:
            raise ValueError(f'arch has {cfg.num_stages} stages, this space has {self.num_stages} '
                             f'({[s.name for s in self.stages]})')
        errors = []
        if cfg.resolution not in self.resolutions:
            errors.append(f'resolution {cfg.resolution} not allowed; allowed: {list(self.resolutions)}')
        for f in ('widths', 'depths', 'kernel_sizes', 'expand_ratios'):
            for i, (v, allowed) in enumerate(zip(getattr(cfg, f), self._choices(f))):
                if v not in allowed:
                    errors.append(f'{f}[{i}] ({self._position_name(f, i)}) = {v} not allowed; allowed: {list(allowed)}')
        if errors:
            raise ValueError('invalid arch for this search space: ' + '; '.join(errors))
        return cfg

    def contains(self, cfg: Union[SubnetConfig, Mapping[str, Any]]) -> bool:
        try:
            self.validate(cfg)
        except ValueError:
            return False
        return True

    def resolve(self, spec: Union[SubnetConfig, Mapping[str, Any], str, os.PathLike]) -> SubnetConfig:
        """The arch of this space that `spec` names (the `Space` grammar: an arch or its dict, 'max', 'min',
        AlphaNet's a0..a6, JSON text or an arch file); ValueError naming what is wrong and what is allowed."""
        # archs.py imports this module (its spaces are SearchSpaces), so its resolver is imported on use
        from ..archs import resolve_arch
        return resolve_arch(spec, self)

    def label(self, cfg: Union[SubnetConfig, Mapping[str, Any]]) -> Optional[str]:
        """None: an AlphaNet arch has no short name of its own (callers name it, e.g. by its MFLOPs)."""
        self.validate(cfg)
        return None

    def _pick(self, pick) -> SubnetConfig:
        return SubnetConfig(
            resolution=pick(self.resolutions),
            **{f: tuple(pick(c) for c in self._choices(f)) for f in ('widths', 'depths', 'kernel_sizes', 'expand_ratios')},
        )

    def max_config(self) -> SubnetConfig:
        """The largest subnet: every choice at its maximum."""
        return self._pick(max)

    def min_config(self) -> SubnetConfig:
        """The smallest subnet: every choice at its minimum."""
        return self._pick(min)

    def sample(self, rng: random.Random) -> SubnetConfig:
        """A uniformly random subnet (each choice independent), drawn from the explicit `rng`."""
        if not isinstance(rng, random.Random):
            raise TypeError(f'rng must be a random.Random, got {type(rng).__name__}')
        return self._pick(rng.choice)

    # ---- resolved block shapes (shared by the models and the FLOPs counter)
    def block_specs(self, cfg: SubnetConfig) -> List[List[BlockSpec]]:
        """Per stage, the BlockSpec of each active block of `cfg` (validated first)."""
        cfg = self.validate(cfg)
        in_chs = cfg.widths[0]
        out: List[List[BlockSpec]] = []
        for si, stage in enumerate(self.stages):
            width, k, t = cfg.widths[si + 1], cfg.kernel_sizes[si], cfg.expand_ratios[si]
            blocks = []
            for j in range(cfg.depths[si]):
                mid = make_divisible(round(in_chs * t), 8) if t != 1 else in_chs
                se_chs = make_divisible(mid // 4, 8) if stage.se else 0
                blocks.append(BlockSpec(in_chs, width, mid, k, stage.stride if j == 0 else 1, t, se_chs, stage.act))
                in_chs = width
            out.append(blocks)
        return out

    def first_block_needs_shortcut_conv(self) -> List[bool]:
        """Per stage: whether some subnet's first block changes width (so a 1x1 shortcut conv is stored)."""
        prev, out = self.stem_widths, []
        for stage in self.stages:
            out.append(any(a != b for a in prev for b in stage.widths))
            prev = stage.widths
        return out

    # ---- serialisation
    def to_dict(self) -> Dict[str, Any]:
        """JSON-able dict in the original `supernet_config` schema (readable by `from_dict`)."""
        d: Dict[str, Any] = {
            'use_v3_head': True,
            'resolutions': list(self.resolutions),
            'first_conv': {'c': list(self.stem_widths), 'act_func': self.stem_act, 's': self.stem_stride},
        }
        for s in self.stages:
            d[s.name] = {'c': list(s.widths), 'd': list(s.depths), 'k': list(s.kernel_sizes),
                         't': list(s.expand_ratios), 's': s.stride, 'act_func': s.act, 'se': s.se}
        d['last_conv'] = {'c': list(self.head_widths), 'act_func': self.head_act}
        if self.head_expand_ratio != 6:
            d['head_expand_ratio'] = self.head_expand_ratio
        return d

    @classmethod
    def from_dict(cls, d: Union['SearchSpace', Mapping[str, Any]]) -> 'SearchSpace':
        """Build from the original `supernet_config` schema (or a dict holding a `supernet_config` key)."""
        d = instance_or_mapping(d, cls, 'a search space')
        if isinstance(d, SearchSpace):
            return d
        if 'supernet_config' in d:
            d = instance_or_mapping(d['supernet_config'], cls, 'supernet_config')
            if isinstance(d, SearchSpace):
                return d
        d = dict(d)
        if not _check_bool('use_v3_head', d.get('use_v3_head', True)):
            raise ValueError('use_v3_head: False is not supported; only the MobileNetV3-style head (True) is')
        missing = [k for k in ('resolutions', 'first_conv', 'last_conv') if k not in d]
        if missing:
            raise ValueError(f'supernet_config is missing {missing}')
        for section in ('first_conv', 'last_conv'):
            if not isinstance(d[section], Mapping):
                raise ValueError(f'supernet_config.{section} must be a mapping, got {bounded_repr(d[section])}')

        def get(section: Mapping[str, Any], key: str, where: str, default: Any = None) -> Any:
            if key not in section:
                if default is None:
                    raise ValueError(f'supernet_config.{where[:40]} is missing {key!r}')
                return default
            return section[key]

        def as_list(v: Any) -> List[Any]:
            return list(v) if isinstance(v, (list, tuple)) else [v]

        def one_stride(section: Mapping[str, Any], where: str, default: int) -> Any:
            stride = get(section, 's', where, default)
            if isinstance(stride, (list, tuple)):
                if len(stride) != 1:
                    raise ValueError(f'supernet_config.{where}.s must be one stride, got {bounded_repr(stride)}')
                stride = stride[0]
            return stride

        stage_names = [k for k in d if k not in ('use_v3_head', 'resolutions', 'first_conv', 'last_conv',
                                                 'head_expand_ratio')]
        stages = []
        for name in stage_names:
            s = d[name]
            if not isinstance(name, str):
                raise ValueError(f'supernet_config: stage names must be strings, got {bounded_repr(name)}')
            if not isinstance(s, Mapping):
                raise ValueError(f'supernet_config.{name[:40]} must be a mapping of c/d/k/t/s/se/act_func, got '
                                 f'{bounded_repr(s)}')
            unknown = set(s) - {'c', 'd', 'k', 't', 's', 'se', 'act_func'}
            if unknown:
                raise ValueError(f'supernet_config.{name[:40]}: unknown keys {bounded_repr(sorted(map(str, unknown)))}; '
                                 f"allowed: ['c', 'd', 'k', 't', 's', 'se', 'act_func']")
            stages.append(StageSpace(
                name=name, widths=as_list(get(s, 'c', name)), depths=as_list(get(s, 'd', name)),
                kernel_sizes=as_list(get(s, 'k', name)), expand_ratios=as_list(get(s, 't', name)),
                stride=one_stride(s, name, 1), se=s.get('se', False), act=s.get('act_func', 'swish')))
        first, last = d['first_conv'], d['last_conv']
        return cls(
            resolutions=as_list(d['resolutions']),
            stem_widths=as_list(get(first, 'c', 'first_conv')),
            stages=tuple(stages),
            head_widths=as_list(get(last, 'c', 'last_conv')),
            stem_stride=one_stride(first, 'first_conv', 2),
            stem_act=first.get('act_func', 'swish'),
            head_act=last.get('act_func', 'swish'),
            head_expand_ratio=d.get('head_expand_ratio', 6),
        )

    @classmethod
    def coerce(cls, value: Union['SearchSpace', Mapping[str, Any], str, os.PathLike]) -> 'SearchSpace':
        """A SearchSpace from itself, a `supernet_config` dict, or the path of an original-schema YAML file."""
        if isinstance(value, SearchSpace):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls.from_yaml(value)
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise TypeError(f'a search space must be a SearchSpace, a supernet_config dict or a YAML path, '
                        f'got {type(value).__name__}')

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike]) -> 'SearchSpace':
        """Read an original-style YAML file (its `supernet_config` section, or the section itself).

        The file is read within bounds (`utils.read_yaml_file`: size, aliases, depth); every error is a
        one-line ValueError naming the file (FileNotFoundError if it does not exist).
        """
        data = read_yaml_file(path, what='search space YAML')
        if not isinstance(data, Mapping):
            raise ValueError(f'{display_path(path)}: expected a YAML mapping with a supernet_config section')
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ValueError(f'{display_path(path)}: {short_message(e, 500)}') from None

    def to_yaml(self, path: Union[str, os.PathLike]) -> None:
        with open(path, 'w') as f:
            yaml.safe_dump({'supernet_config': self.to_dict()}, f, sort_keys=False)

    # ---- evolution operators: pure, every random draw from the explicit rng, results always in the space
    def _genes(self, cfg: SubnetConfig) -> List[Tuple[int, Tuple[int, ...]]]:
        """(value, allowed choices) of every gene of `cfg`: resolution, then each field in SubnetConfig order."""
        out = [(cfg.resolution, self.resolutions)]
        for f in ('widths', 'depths', 'kernel_sizes', 'expand_ratios'):
            out += list(zip(getattr(cfg, f), self._choices(f)))
        return out

    @property
    def size(self) -> int:
        """The number of distinct archs in the space."""
        return math.prod(len(choices) for _, choices in self._genes(self.min_config()))

    def enumerate_configs(self) -> Iterator[SubnetConfig]:
        """Every arch of the space, in a fixed order (check `size` first: it is astronomical for AlphaNet's)."""
        for values in itertools.product(*(choices for _, choices in self._genes(self.min_config()))):
            yield self._from_genes(list(values))

    def _from_genes(self, values: List[int]) -> SubnetConfig:
        n = self.num_stages
        cuts = [1, 1 + n + 2, 1 + 2 * n + 2, 1 + 3 * n + 2, 1 + 4 * n + 2]
        return SubnetConfig(values[0], *(tuple(values[a:b]) for a, b in zip(cuts, cuts[1:])))

    def mutate(self, cfg: Union[SubnetConfig, Mapping[str, Any]], rng: random.Random, prob: float,
               resolution_prob: Optional[float] = None) -> SubnetConfig:
        """`cfg` with each gene, with probability `prob`, moved to a *different* allowed choice.

        Args:
            cfg: an arch of this space.
            rng: the explicit random.Random every draw comes from (one draw per gene, whatever its choices).
            prob: per-gene mutation probability in [0, 1]; genes with a single choice never change.
            resolution_prob: probability for the resolution gene (default: `prob`).
        """
        cfg = self.validate(cfg)
        _check_rng(rng)
        resolution_prob = prob if resolution_prob is None else resolution_prob
        for name, p in (('prob', prob), ('resolution_prob', resolution_prob)):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f'mutation {name} must be a number in [0, 1], got {p!r:.40}')
        values = []
        for i, (value, choices) in enumerate(self._genes(cfg)):
            if rng.random() < (resolution_prob if i == 0 else prob) and len(choices) > 1:
                value = rng.choice([c for c in choices if c != value])
            values.append(value)
        return self._from_genes(values)

    def crossover(self, a: Union[SubnetConfig, Mapping[str, Any]], b: Union[SubnetConfig, Mapping[str, Any]],
                  rng: random.Random) -> SubnetConfig:
        """Uniform crossover: each gene from `a` or `b` with probability 1/2 (one draw per gene from `rng`)."""
        a, b = self.validate(a), self.validate(b)
        _check_rng(rng)
        return self._from_genes([x if rng.random() < 0.5 else y
                                 for (x, _), (y, _) in zip(self._genes(a), self._genes(b))])


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, random.Random):
        raise TypeError(f'rng must be a random.Random, got {type(rng).__name__}')
