"""Width spaces of slimmable networks: one width multiplier (and input resolution) per subnet; no torch.

A `WidthConfig` is one subnet (a width multiplier of the full network and a resolution); a `WidthSpace` is the
list of multipliers and resolutions a slimmable supernet runs. Like the AlphaNet `SearchSpace` it follows the
`Space` protocol (spaces/protocol.py: validate, resolve, extremes, sampling, mutation and crossover with an explicit
RNG, dict round trips), so sandwich training, search and export work on it unchanged. The channel counts of a width
are not computed here: they come from timm's own model of that width (see models/slimmable_mobilenet.py).
"""
from __future__ import annotations

import math
import os
import random
import reprlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

from ..utils import bounded_repr, check_int, display_path, parse_yaml, short_message
from .protocol import MAX_ARCH_BYTES, is_arch_file, read_arch_data, unwrap_arch_data

__all__ = ['WidthConfig', 'WidthSpace', 'check_width', 'width_range']

# widths are compared at this many decimals, so 0.35 read from JSON equals 0.05 * 7 computed in Python
_DECIMALS = 4
_MAX_CHOICES = 1000  # a space is a short list; refuse absurd ones before formatting them into errors


def check_width(value: Any, name: str = 'width') -> float:
    """`value` as a width multiplier (a positive finite number, kept at 4 decimals), or ValueError naming it."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or round(float(value), _DECIMALS) <= 0:
        raise ValueError(f'{name} must be a positive number (a width multiplier such as 0.5), got '
                         f'{reprlib.repr(value)}')
    return round(float(value), _DECIMALS)


def _choices(name: str, value: Any, convert) -> Tuple[Any, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ValueError(f'{name} must be a list, got {reprlib.repr(value)}')
    if not value:
        raise ValueError(f'{name} needs at least one choice')
    if len(value) > _MAX_CHOICES:
        raise ValueError(f'{name} has {len(value)} choices; at most {_MAX_CHOICES} are allowed')
    return tuple(sorted({convert(v) for v in value}))


def _resolution(value: Any) -> int:
    value = check_int('resolution', value)
    if value < 1:
        raise ValueError(f'resolution must be positive, got {value}')
    return value


def _strict_keys(d: Any, cls_name: str, allowed: Sequence[str], required: Sequence[str]) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f'a {cls_name} must be a {cls_name} or a dict, got {type(d).__name__}')
    unknown = sorted(str(k)[:40] for k in d if k not in allowed)
    if unknown:
        raise ValueError(f'unknown {cls_name} keys {unknown[:10]}; allowed: {list(allowed)}')
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f'{cls_name} is missing {missing}; got keys {[str(k)[:40] for k in list(d)[:10]]}')


@dataclass(frozen=True)
class WidthConfig:
    """One subnet of a slimmable network: `width` multiplies every layer's channels; `resolution` is its input size.

    Hashable (search caches key on it); the width is kept at 4 decimals so values from JSON compare equal.
    """
    width: float
    resolution: int

    def __post_init__(self) -> None:
        object.__setattr__(self, 'width', check_width(self.width))
        object.__setattr__(self, 'resolution', _resolution(self.resolution))

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict."""
        return {'width': self.width, 'resolution': self.resolution}

    @classmethod
    def from_dict(cls, d: Union['WidthConfig', Mapping[str, Any]]) -> 'WidthConfig':
        """Inverse of `to_dict`; unknown keys are an error."""
        if isinstance(d, WidthConfig):
            return d
        _strict_keys(d, 'WidthConfig', ('width', 'resolution'), ('width', 'resolution'))
        return cls(width=d['width'], resolution=d['resolution'])


def width_range(start: float, stop: float, step: float = 0.05) -> Tuple[float, ...]:
    """Widths ``start, start + step, ..., stop`` (both ends included; `stop - start` must be a multiple of `step`)."""
    start, stop, step = check_width(start, 'start'), check_width(stop, 'stop'), check_width(step, 'step')
    n = (stop - start) / step
    if stop < start or abs(n - round(n)) > 1e-6:
        raise ValueError(f'width range {start}..{stop} is not a whole number of steps of {step}')
    if round(n) + 1 > _MAX_CHOICES:
        raise ValueError(f'width range {start}..{stop} step {step} has {round(n) + 1} widths; at most '
                         f'{_MAX_CHOICES} are allowed')
    return tuple(round(start + i * step, _DECIMALS) for i in range(round(n) + 1))


@dataclass(frozen=True)
class WidthSpace:
    """The widths and resolutions a slimmable supernet runs (each a sorted tuple without repeats).

    Args:
        widths: Width multipliers, e.g. ``width_range(0.35, 1.0)``.
        resolutions: Input resolutions (one for the classic slimmable setup).
    """
    widths: Tuple[float, ...]
    resolutions: Tuple[int, ...] = (224,)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'widths', _choices('widths', self.widths, check_width))
        object.__setattr__(self, 'resolutions', _choices('resolutions', self.resolutions, _resolution))

    # ---- configs
    def validate(self, arch: Union[WidthConfig, Mapping[str, Any], int, float]) -> WidthConfig:
        """`arch` as a WidthConfig of this space, or ValueError naming the value and the allowed ones.

        A bare number is a width; it is accepted when the space has a single resolution.
        """
        if isinstance(arch, (int, float)) and not isinstance(arch, bool):
            if len(self.resolutions) != 1:
                raise ValueError(f'a bare width ({reprlib.repr(arch)}) is ambiguous in a space with resolutions '
                                 f'{list(self.resolutions)}; pass {{"width": ..., "resolution": ...}}')
            arch = WidthConfig(arch, self.resolutions[0])
        arch = WidthConfig.from_dict(arch)
        errors = []
        if arch.width not in self.widths:
            errors.append(f'width {arch.width} not allowed; allowed: {list(self.widths)}')
        if arch.resolution not in self.resolutions:
            errors.append(f'resolution {arch.resolution} not allowed; allowed: {list(self.resolutions)}')
        if errors:
            raise ValueError('invalid subnet for this width space: ' + '; '.join(errors))
        return arch

    def contains(self, arch: Any) -> bool:
        """Whether `arch` is a subnet of this space."""
        try:
            self.validate(arch)
        except ValueError:
            return False
        return True

    def resolve(self, spec: Union[WidthConfig, Mapping[str, Any], int, float, str, os.PathLike]) -> WidthConfig:
        """The subnet of this space that `spec` names (the `Space` grammar): a WidthConfig or its dict, 'max',
        'min', a bare width (0.35 or '0.35', with one resolution), a mapping as JSON or YAML flow text
        ('{width: 0.5, resolution: 224}'), or a JSON/YAML arch file; ValueError naming the value and the allowed.
        """
        if not isinstance(spec, (str, os.PathLike)):
            return self.validate(spec)
        text = os.fspath(spec).strip()
        if len(text) > MAX_ARCH_BYTES:
            raise ValueError(f'an arch of {len(text)} characters is too long (at most {MAX_ARCH_BYTES})')
        if text in ('max', 'min'):
            return self.max_config() if text == 'max' else self.min_config()
        if text.startswith('{'):  # YAML flow style takes JSON objects too
            return self.validate(unwrap_arch_data(parse_yaml(text, 'arch text'), 'arch text', 'width, resolution'))
        try:
            width = float(text)
        except ValueError:
            width = None
        if width is not None:
            return self.validate(width)
        if is_arch_file(text):
            data = read_arch_data(text, 'width, resolution')
            try:
                return self.validate(data)
            except ValueError as e:
                raise ValueError(f'{display_path(text)}: {short_message(e, 500)}') from None
        raise ValueError(f'unknown arch {bounded_repr(text)} for a WidthSpace; allowed: max, min, a width of '
                         f'{bounded_repr(list(self.widths))} (e.g. {self.widths[0]}), {{width: ..., resolution: ...}} '
                         f'as a mapping or JSON/YAML text, or a JSON/YAML arch file')

    def label(self, arch: Union[WidthConfig, Mapping[str, Any], int, float]) -> str:
        """``w<width>`` (``w0.35``), with ``@<resolution>`` when the space has several resolutions."""
        arch = self.validate(arch)
        return f'w{arch.width}' + (f'@{arch.resolution}' if len(self.resolutions) > 1 else '')

    def max_config(self) -> WidthConfig:
        """The widest subnet at the largest resolution."""
        return WidthConfig(self.widths[-1], self.resolutions[-1])

    def min_config(self) -> WidthConfig:
        """The narrowest subnet at the smallest resolution."""
        return WidthConfig(self.widths[0], self.resolutions[0])

    @property
    def size(self) -> int:
        """The number of distinct archs in the space."""
        return len(self.widths) * len(self.resolutions)

    def enumerate_configs(self) -> Iterator[WidthConfig]:
        """Every arch of the space, widths first, in a fixed order."""
        for resolution in self.resolutions:
            for width in self.widths:
                yield WidthConfig(width, resolution)

    def sample(self, rng: random.Random) -> WidthConfig:
        """A uniformly random subnet (width and resolution independent), drawn from the explicit `rng`."""
        _check_rng(rng)
        return WidthConfig(rng.choice(self.widths), rng.choice(self.resolutions))

    def mutate(self, arch: Union[WidthConfig, Mapping[str, Any]], rng: random.Random, prob: float = 0.1,
               resolution_prob: Optional[float] = 0.5) -> WidthConfig:
        """`arch` with its width replaced by a different choice with probability `prob`, and its resolution with
        probability `resolution_prob` (None: `prob`, as `SearchSpace.mutate`) (the original evolution's per-gene
        mutation; once-for-all's defaults)."""
        arch = self.validate(arch)
        _check_rng(rng)
        resolution_prob = prob if resolution_prob is None else resolution_prob
        for name, p in (('prob', prob), ('resolution_prob', resolution_prob)):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise ValueError(f'{name} must be a probability in [0, 1], got {reprlib.repr(p)}')
        width, resolution = arch.width, arch.resolution
        # one draw per gene, always, so the RNG stream does not depend on the outcome
        if rng.random() < prob and len(self.widths) > 1:
            width = rng.choice([w for w in self.widths if w != width])
        if rng.random() < resolution_prob and len(self.resolutions) > 1:
            resolution = rng.choice([r for r in self.resolutions if r != resolution])
        return WidthConfig(width, resolution)

    def crossover(self, a: Union[WidthConfig, Mapping[str, Any]], b: Union[WidthConfig, Mapping[str, Any]],
                  rng: random.Random) -> WidthConfig:
        """Uniform crossover: each gene (width, resolution) from `a` or `b` with probability 1/2."""
        a, b = self.validate(a), self.validate(b)
        _check_rng(rng)
        return WidthConfig(a.width if rng.random() < 0.5 else b.width,
                           a.resolution if rng.random() < 0.5 else b.resolution)

    # ---- serialisation
    def to_dict(self) -> Dict[str, Any]:
        """JSON-able dict (readable by `from_dict`)."""
        return {'widths': list(self.widths), 'resolutions': list(self.resolutions)}

    @classmethod
    def from_dict(cls, d: Union['WidthSpace', Mapping[str, Any]]) -> 'WidthSpace':
        """Inverse of `to_dict`; unknown keys are an error (a typo would silently change the space)."""
        if isinstance(d, WidthSpace):
            return d
        _strict_keys(d, 'WidthSpace', ('widths', 'resolutions'), ('widths',))
        return cls(widths=d['widths'], resolutions=d.get('resolutions', (224,)))

    @classmethod
    def coerce(cls, value: Union['WidthSpace', Mapping[str, Any]]) -> 'WidthSpace':
        """A WidthSpace from itself or its dict."""
        if isinstance(value, (WidthSpace, Mapping)):
            return cls.from_dict(value)
        raise TypeError(f'a width space must be a WidthSpace or a dict with widths (and resolutions), '
                        f'got {type(value).__name__}')


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, random.Random):
        raise TypeError(f'rng must be a random.Random, got {type(rng).__name__}')
