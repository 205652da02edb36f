"""The AlphaNet search space, the eight searched architectures of the paper (arXiv:2102.07954), and the one
place that turns what users write for a space or an arch into a validated object."""
import json
import os
from typing import Any, Dict, Mapping, Union

import yaml

from .spaces import SearchSpace, StageSpace, SubnetConfig
from .spaces._values import short_text

__all__ = ['ALPHANET_SPACE', 'ALPHANET_ARCHS', 'ALPHANET_TOP1', 'ARCH_NAMES', 'resolve_arch', 'resolve_space']

ArchSpec = Union[SubnetConfig, Mapping[str, Any], str, os.PathLike]
SpaceSpec = Union[SearchSpace, Mapping[str, Any], str, os.PathLike, None]
MAX_ARCH_FILE_BYTES = 1 << 20  # an arch is a few hundred bytes; refuse anything that is clearly not one


def _stage(name, widths, depths, ks, ts, stride, se):
    return StageSpace(name, widths, depths, ks, ts, stride=stride, se=se, act='swish')


# `supernet_config` of the original configs/train_alphanet_models.yml
ALPHANET_SPACE = SearchSpace(
    resolutions=(192, 224, 256, 288),
    stem_widths=(16, 24),
    stages=(
        _stage('mb1', (16, 24), (1, 2), (3, 5), (1,), 1, False),
        _stage('mb2', (24, 32), (3, 4, 5), (3, 5), (4, 5, 6), 2, False),
        _stage('mb3', (32, 40), (3, 4, 5, 6), (3, 5), (4, 5, 6), 2, True),
        _stage('mb4', (64, 72), (3, 4, 5, 6), (3, 5), (4, 5, 6), 2, False),
        _stage('mb5', (112, 120, 128), (3, 4, 5, 6, 7, 8), (3, 5), (4, 5, 6), 1, True),
        _stage('mb6', (192, 200, 208, 216), (3, 4, 5, 6, 7, 8), (3, 5), (6,), 2, True),
        _stage('mb7', (216, 224), (1, 2), (3, 5), (6,), 1, True),
    ),
    head_widths=(1792, 1984),
)


def _arch(res, widths, depths, ks, ts) -> SubnetConfig:
    return SubnetConfig(res, widths, depths, ks, ts)


# name -> searched arch (the original configs/eval_alphanet_models.yml)
ALPHANET_ARCHS: Dict[str, SubnetConfig] = {
    'a0': _arch(192, (16, 16, 24, 32, 64, 112, 192, 216, 1792), (1, 3, 3, 3, 3, 3, 1), (3, 3, 3, 3, 3, 3, 3), (1, 4, 4, 4, 4, 6, 6)),
    'a1': _arch(224, (16, 16, 24, 32, 64, 112, 192, 216, 1984), (1, 3, 3, 3, 3, 3, 1), (3, 3, 3, 5, 3, 5, 3), (1, 4, 4, 4, 4, 6, 6)),
    'a2': _arch(224, (16, 16, 24, 32, 64, 112, 200, 224, 1984), (1, 3, 3, 3, 3, 4, 1), (3, 3, 3, 3, 3, 5, 3), (1, 4, 5, 4, 4, 6, 6)),
    'a3': _arch(224, (16, 16, 24, 32, 64, 112, 208, 224, 1984), (2, 3, 3, 4, 3, 5, 1), (3, 3, 3, 5, 3, 3, 3), (1, 4, 4, 4, 4, 6, 6)),
    'a4': _arch(256, (16, 16, 24, 32, 64, 112, 192, 216, 1984), (1, 3, 3, 4, 3, 5, 1), (3, 3, 3, 5, 3, 5, 3), (1, 4, 4, 5, 4, 6, 6)),
    'a5_small': _arch(256, (16, 16, 24, 32, 64, 112, 208, 216, 1984), (1, 3, 3, 4, 4, 5, 1), (3, 3, 3, 3, 3, 5, 3), (1, 4, 4, 5, 4, 6, 6)),
    'a5_base': _arch(288, (16, 16, 24, 32, 64, 112, 200, 216, 1984), (2, 3, 4, 3, 3, 5, 1), (3, 3, 5, 5, 3, 3, 3), (1, 4, 4, 4, 5, 6, 6)),
    'a6': _arch(288, (16, 16, 24, 32, 64, 112, 216, 224, 1984), (1, 3, 3, 4, 4, 6, 1), (3, 3, 3, 3, 3, 5, 3), (1, 4, 6, 5, 4, 6, 6)),
}

# ImageNet top-1 (%) reported in the paper
ALPHANET_TOP1: Dict[str, float] = {
    'a0': 77.87, 'a1': 78.94, 'a2': 79.20, 'a3': 79.41, 'a4': 80.01, 'a5_small': 80.29, 'a5_base': 80.62, 'a6': 80.78,
}

# names `resolve_arch` accepts besides dicts, JSON text and files
ARCH_NAMES = (*ALPHANET_ARCHS, 'max', 'min')
_ARCH_FILE_EXTS = ('.json', '.yaml', '.yml')


def resolve_space(space: SpaceSpec = None) -> SearchSpace:
    """The search space for `space`: None = AlphaNet's; else a SearchSpace, a `supernet_config` dict or a YAML path."""
    return ALPHANET_SPACE if space is None else SearchSpace.coerce(space)


def resolve_arch(arch: ArchSpec, space: SpaceSpec = None) -> SubnetConfig:
    """The validated arch of `space` (default AlphaNet's) that `arch` names.

    Args:
        arch: a SubnetConfig or dict (our keys or the original `width`/`depth`/...); a name: `a0` .. `a6`
            (`alphanet_` prefix optional), `max` or `min` of the space; a JSON object as text; or the path of a
            JSON/YAML file holding an arch (or a mapping with an `arch` entry, as config.json and pareto points do).
        space: see `resolve_space`.

    Raises:
        ValueError: unknown name (the allowed ones are listed), unreadable file, or an arch outside the space
            (naming the gene and its allowed values).
        FileNotFoundError: a path that does not exist.
    """
    space = resolve_space(space)
    if isinstance(arch, (SubnetConfig, Mapping)):
        return space.validate(arch)
    if not isinstance(arch, (str, os.PathLike)):
        raise TypeError(f'an arch must be a SubnetConfig, a dict, a name or a file path, got {type(arch).__name__}')
    text = os.fspath(arch).strip()
    name = text[len('alphanet_'):] if text.startswith('alphanet_') else text
    if name == 'max':
        return space.max_config()
    if name == 'min':
        return space.min_config()
    if name in ALPHANET_ARCHS:
        try:
            return space.validate(ALPHANET_ARCHS[name])
        except ValueError as e:
            raise ValueError(f'arch {name!r} is not in this search space: {e}') from None
    if text.startswith('{'):
        return space.validate(_unwrap_arch(_parse(text, 'arch JSON', json_only=True), 'arch JSON'))
    if text.lower().endswith(_ARCH_FILE_EXTS) or os.path.isfile(text):
        return space.validate(_unwrap_arch(_read_arch_file(text), short_text(text)))
    raise ValueError(f'unknown arch {text[:80]!r}; allowed: {", ".join(ARCH_NAMES)}, a dict, a JSON object, or a '
                     f'path to a JSON/YAML arch file')


def _read_arch_file(path: str) -> Any:
    shown = short_text(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'arch file not found: {shown}')
    if not os.path.isfile(path):
        raise ValueError(f'{shown}: not a file')
    size = os.path.getsize(path)
    if size > MAX_ARCH_FILE_BYTES:
        raise ValueError(f'{shown}: {size} bytes is too large for an arch file (at most {MAX_ARCH_FILE_BYTES})')
    with open(path, 'rb') as f:
        raw = f.read(MAX_ARCH_FILE_BYTES + 1)
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        raise ValueError(f'{shown}: not a UTF-8 text file') from None
    return _parse(text, shown, json_only=path.lower().endswith('.json'))


def _parse(text: str, where: str, json_only: bool) -> Any:
    try:
        return json.loads(text) if json_only else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ValueError(f'{where}: not valid {"JSON" if json_only else "YAML"} ({first})') from None


def _unwrap_arch(data: Any, where: str) -> Mapping[str, Any]:
    if isinstance(data, Mapping) and isinstance(data.get('arch'), Mapping):
        data = data['arch']
    elif isinstance(data, Mapping) and isinstance(data.get('model_args'), Mapping) \
            and isinstance(data['model_args'].get('arch'), Mapping):
        data = data['model_args']['arch']  # a timm config.json of an exported model
    if not isinstance(data, Mapping):
        raise ValueError(f'{where}: expected a mapping with resolution, width, depth, kernel_size, expand_ratio; '
                         f'got {type(data).__name__}')
    try:
        return SubnetConfig.from_dict(data).to_dict()
    except (ValueError, TypeError) as e:
        raise ValueError(f'{where}: not an arch: {e}') from None
