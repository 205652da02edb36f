"""The `Space` protocol: what training, search and export need from a supernet's space; no torch.

Two spaces follow it: the AlphaNet `SearchSpace` (a gene per stage and field) and the slimmable `WidthSpace` (one
width multiplier and a resolution). Code outside `spaces/` calls these methods instead of branching on the type.

`resolve(spec)` is the one arch grammar, the same for every space:

- the space's own arch object (`SubnetConfig`, `WidthConfig`) or its dict;
- ``'max'`` / ``'min'``: the space's extremes;
- a mapping as JSON text (``'{"width": 0.5, "resolution": 224}'``);
- the path of a JSON/YAML file holding an arch, or a mapping with an ``arch`` entry (pareto points, ``final/``
  arch files) or ``model_args.arch`` (an exported model's config.json);
- and what only some spaces have: AlphaNet's paper archs ``a0`` .. ``a6`` (``alphanet_`` prefix optional) in a
  `SearchSpace` that holds them; a bare width (``0.35`` or ``'0.35'``) in a `WidthSpace` with one resolution, which
  also takes a mapping as YAML flow text (``'{width: 0.5, resolution: 224}'``, as train configs write it).

Everything else is a ValueError naming the value and what the space allows.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Iterator, Mapping, Optional, Protocol, Union, runtime_checkable

from ..utils import display_path, read_json_file, read_yaml_file

__all__ = ['ARCH_FILE_EXTS', 'MAX_ARCH_BYTES', 'Space', 'is_arch_file', 'read_arch_data', 'unwrap_arch_data']

MAX_ARCH_BYTES = 1 << 20  # an arch is a few hundred bytes; refuse anything that is clearly not one
ARCH_FILE_EXTS = ('.json', '.yaml', '.yml')


@runtime_checkable
class Space(Protocol):
    """The set of subnets a supernet runs. Archs are frozen and hashable; every random draw comes from an explicit
    `random.Random`; results are always in the space.

    Members:
        size: the number of distinct archs.
        validate(arch): `arch` (the arch object or its dict) as the space's arch object, or ValueError naming
            every value outside the space and the allowed ones.
        contains(arch): whether `validate` accepts `arch`.
        resolve(spec): the arch `spec` names, in the grammar above (the one arch resolver of the package).
        max_config() / min_config(): the largest / smallest subnet.
        sample(rng): a uniformly random subnet.
        enumerate_configs(): every arch, in a fixed order (check `size` first).
        mutate(arch, rng, prob, resolution_prob): `arch` with each gene moved, with probability `prob` (the
            resolution's: `resolution_prob`; None = `prob`), to a different allowed choice.
        crossover(a, b, rng): uniform crossover of two archs.
        label(arch): a short name of `arch` for folders and logs where the space has one (a width: ``w0.35``),
            else None.
        to_dict(): a JSON-able dict that the space's `from_dict` reads back.
    """

    @property
    def size(self) -> int: ...

    def validate(self, arch: Any) -> Any: ...

    def contains(self, arch: Any) -> bool: ...

    def resolve(self, spec: Any) -> Any: ...

    def max_config(self) -> Any: ...

    def min_config(self) -> Any: ...

    def sample(self, rng: random.Random) -> Any: ...

    def enumerate_configs(self) -> Iterator[Any]: ...

    def mutate(self, arch: Any, rng: random.Random, prob: float, resolution_prob: Optional[float] = None) -> Any: ...

    def crossover(self, a: Any, b: Any, rng: random.Random) -> Any: ...

    def label(self, arch: Any) -> Optional[str]: ...

    def to_dict(self) -> Dict[str, Any]: ...


def is_arch_file(text: str) -> bool:
    """Whether arch text names a file: a JSON/YAML extension (so a missing file is FileNotFoundError, not 'unknown
    arch'), or an existing file."""
    return text.lower().endswith(ARCH_FILE_EXTS) or os.path.isfile(text)


def read_arch_data(path: Union[str, os.PathLike], keys: str = 'an arch') -> Mapping[str, Any]:
    """The arch mapping in a JSON (``.json``) or YAML file, unwrapped (`unwrap_arch_data`); not checked against a
    space. Read within bounds (`MAX_ARCH_BYTES`, aliases, depth); messages name the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, too large, not valid JSON/YAML, or no mapping in it.
    """
    reader = read_json_file if os.fspath(path).lower().endswith('.json') else read_yaml_file
    return unwrap_arch_data(reader(path, max_bytes=MAX_ARCH_BYTES, what='arch file'), display_path(path), keys)


def unwrap_arch_data(data: Any, where: str, keys: str = 'an arch') -> Mapping[str, Any]:
    """`data` itself, or the mapping under its ``arch`` or ``model_args.arch`` key (a timm config.json of an
    exported model); a ValueError starting with `where` and naming the expected `keys` when there is none."""
    if isinstance(data, Mapping) and isinstance(data.get('arch'), Mapping):
        data = data['arch']
    elif isinstance(data, Mapping) and isinstance(data.get('model_args'), Mapping) \
            and isinstance(data['model_args'].get('arch'), Mapping):
        data = data['model_args']['arch']
    if not isinstance(data, Mapping):
        raise ValueError(f'{where}: expected a mapping with {keys}; got {type(data).__name__}')
    return data
