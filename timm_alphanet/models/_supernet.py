"""The `Supernet` protocol: what sandwich training, calibration, search and export need from a weight-sharing model.

Any model with these members works with `SandwichTask`, the trainer, `calibrate_bn`, search and export: the
AlphaNet supernet today, slimmable MobileNets next. Nothing checks model names.
"""
import contextlib
import random
from typing import Any, Optional, Protocol, Tuple, runtime_checkable

__all__ = ['SUBNET_KINDS', 'Supernet', 'is_supernet', 'sample_from_space']

SUBNET_KINDS = ('max', 'min', 'random')


@runtime_checkable
class Supernet(Protocol):
    """A model that runs one subnet of its `space` at a time.

    Members:
        space: the search space, a `timm_alphanet.spaces.Space` (`validate`, `resolve`, `max_config`,
            `min_config`, `sample(rng)`, mutation and crossover, `to_dict`).
        active_subnet: the subnet forward runs (a frozen arch with a `resolution`).
        set_subnet(arch): run `arch` (validated against `space`).
        sample_subnet(kind, rng): 'max', 'min' or 'random' arch of the space, without switching to it.
        regularized(drop_rate=None, drop_path=True): a context inside which forward applies dropout and drop path
            (the recipe regularizes the max subnet only).
        macs_and_params(arch=None, num_classes=None): (MACs, parameters) of `arch` (default: the active subnet)
            with the model's input channels and classifier (or one of `num_classes`), by the original counter's
            convention: the one cost of a subnet that search and export record, whatever the space.
    """
    space: Any

    @property
    def active_subnet(self) -> Any: ...

    def set_subnet(self, arch: Any) -> None: ...

    def sample_subnet(self, kind: str, rng: Optional[random.Random] = None) -> Any: ...

    def regularized(self, drop_rate: Optional[float] = None,
                    drop_path: bool = True) -> contextlib.AbstractContextManager: ...

    def macs_and_params(self, arch: Any = None, num_classes: Optional[int] = None) -> Tuple[int, int]: ...


def is_supernet(model: Any) -> bool:
    """Whether `model` (unwrapped: no DDP/compile wrapper) follows the `Supernet` protocol."""
    return isinstance(model, Supernet)


def sample_from_space(space: Any, kind: str, rng: Optional[random.Random] = None) -> Any:
    """`sample_subnet` for any space with `max_config`, `min_config` and `sample(rng)`: 'max', 'min' or 'random'
    (which needs an explicit `rng`)."""
    if kind == 'max':
        return space.max_config()
    if kind == 'min':
        return space.min_config()
    if kind == 'random':
        if rng is None:
            raise ValueError("sample_subnet('random') needs an explicit rng (random.Random)")
        return space.sample(rng)
    raise ValueError(f'unknown subnet kind {kind!r:.40}; allowed: {list(SUBNET_KINDS)}')
