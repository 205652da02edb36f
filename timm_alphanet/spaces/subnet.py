"""`SubnetConfig`: one AlphaNet architecture, frozen and hashable; nothing here imports torch."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Tuple, Union

from ..utils import bounded_repr, check_int, instance_or_mapping, int_tuple, plain_items, plain_number

__all__ = ['SubnetConfig']

# original arch-dict key -> our field name
_ARCH_ALIASES = {'width': 'widths', 'depth': 'depths', 'kernel_size': 'kernel_sizes', 'expand_ratio': 'expand_ratios'}
_ARCH_IGNORED = ('net_id', 'name')  # labels found in the original arch YAML files


@dataclass(frozen=True)
class SubnetConfig:
    """One AlphaNet subnet.

    `widths` = (stem, one per stage..., head); `depths`, `kernel_sizes` and `expand_ratios` have one
    entry per stage. Hashable, so it can key caches (e.g. in search).
    """
    resolution: int
    widths: Tuple[int, ...]
    depths: Tuple[int, ...]
    kernel_sizes: Tuple[int, ...]
    expand_ratios: Tuple[int, ...]

    def __post_init__(self) -> None:
        # normalise lists to tuples of Python ints (numpy/torch integers too) so configs hash and compare equal
        object.__setattr__(self, 'resolution', check_int('resolution', plain_number(self.resolution)))
        for f in ('widths', 'depths', 'kernel_sizes', 'expand_ratios'):
            object.__setattr__(self, f, int_tuple(f, plain_items(getattr(self, f))))
        counts = {'widths': len(self.widths) - 2, 'depths': len(self.depths),
                  'kernel_sizes': len(self.kernel_sizes), 'expand_ratios': len(self.expand_ratios)}
        if len(set(counts.values())) != 1 or counts['depths'] == 0:
            raise ValueError(
                'arch fields disagree on the number of stages: widths needs stem + one per stage + head, the others '
                f'one per stage; got widths {bounded_repr(list(self.widths))} ({len(self.widths)} entries), depths '
                f'{bounded_repr(list(self.depths))}, kernel_sizes {bounded_repr(list(self.kernel_sizes))}, expand_ratios '
                f'{bounded_repr(list(self.expand_ratios))}')
        for f in ('widths', 'depths', 'kernel_sizes', 'expand_ratios'):
            bad = [v for v in getattr(self, f) if v < 1]
            if bad:
                raise ValueError(f'{f} must be positive, got {bounded_repr(bad[0])} in {bounded_repr(list(getattr(self, f)))}')
        if self.resolution < 1:
            raise ValueError(f'resolution must be positive, got {bounded_repr(self.resolution)}')

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict with our field names."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def to_original_dict(self) -> Dict[str, Any]:
        """Dict with the original code's keys (`width`, `depth`, `kernel_size`, `expand_ratio`)."""
        inv = {v: k for k, v in _ARCH_ALIASES.items()}
        return {inv.get(k, k): v for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, d: Union['SubnetConfig', Mapping[str, Any]]) -> 'SubnetConfig':
        """Build from our keys or the original ones (`width`, `depth`, `kernel_size`, `expand_ratio`)."""
        d = instance_or_mapping(d, cls, 'an arch')
        if isinstance(d, SubnetConfig):
            return d
        out: Dict[str, Any] = {}
        allowed = [f.name for f in fields(cls)]
        for k, v in d.items():
            if k in _ARCH_IGNORED:
                continue
            name = _ARCH_ALIASES.get(k, k)
            if name not in allowed:
                raise ValueError(f'unknown arch key {bounded_repr(k)}; allowed: {allowed} (or the original '
                                 f'{list(_ARCH_ALIASES)})')
            if name in out:
                raise ValueError(f'arch key {name!r} given twice (as {name!r} and its alias)')
            out[name] = v
        missing = [k for k in allowed if k not in out]
        if missing:
            raise ValueError(f'arch is missing {missing}; got keys {bounded_repr(list(d))}')
        return cls(**out)

