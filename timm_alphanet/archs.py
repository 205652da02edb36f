"""The AlphaNet search space, the eight searched architectures of the paper (arXiv:2102.07954), the demo's small
space, and the one place that turns what users write for a space or an arch into a validated object."""
import os
from typing import Any, Dict, Mapping, Union

from .spaces import SearchSpace, StageSpace, SubnetConfig
from .spaces.protocol import MAX_ARCH_BYTES, is_arch_file, unwrap_arch_data
from .utils import display_path, parse_json, read_json_file, read_yaml_file, short_message

__all__ = ['ALPHANET_SPACE', 'ALPHANET_ARCHS', 'ALPHANET_TOP1', 'ARCH_NAMES', 'DEMO_SPACE', 'resolve_arch',
           'resolve_space', 'read_arch_file']

ArchSpec = Union[SubnetConfig, Mapping[str, Any], str, os.PathLike]
SpaceSpec = Union[SearchSpace, Mapping[str, Any], str, os.PathLike, None]
MAX_ARCH_FILE_BYTES = MAX_ARCH_BYTES


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


# The demo's space (the trainer's default, original schema): a small AlphaNet-style space for 32x32 inputs, 4 stages,
# two resolutions, ~20-70k parameters
DEMO_SPACE: Dict[str, Any] = {
    'use_v3_head': True,
    'resolutions': [24, 32],
    'first_conv': {'c': [8, 16], 'act_func': 'swish', 's': 2},
    'mb1': {'c': [8, 16], 'd': [1, 2], 'k': [3], 't': [1], 's': 1, 'act_func': 'swish', 'se': False},
    'mb2': {'c': [16, 24], 'd': [1, 2], 'k': [3, 5], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': False},
    'mb3': {'c': [24, 32], 'd': [1, 2], 'k': [3, 5], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': True},
    'mb4': {'c': [32, 48], 'd': [1, 2], 'k': [3], 't': [3, 4], 's': 2, 'act_func': 'swish', 'se': True},
    'last_conv': {'c': [96, 128], 'act_func': 'swish'},
    'head_expand_ratio': 2,
}


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
        if len(text) > MAX_ARCH_FILE_BYTES:
            raise ValueError(f'arch JSON of {len(text)} characters is too large (at most {MAX_ARCH_FILE_BYTES})')
        return space.validate(_unwrap_arch(parse_json(text, 'arch JSON'), 'arch JSON'))
    if is_arch_file(text):
        return space.validate(read_arch_file(text))
    raise ValueError(f'unknown arch {text[:80]!r}; allowed: {", ".join(ARCH_NAMES)}, a dict, a JSON object, or a '
                     f'path to a JSON/YAML arch file')


def read_arch_file(path: Union[str, os.PathLike]) -> SubnetConfig:
    """The arch in a JSON (`.json`) or YAML file: an arch mapping, or one under `arch` / `model_args.arch`.

    The file is read within bounds (`utils`: size, aliases, depth); it is not checked against a space.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, too large, not valid JSON/YAML, or not an arch; the message names the file.
    """
    reader = read_json_file if os.fspath(path).lower().endswith('.json') else read_yaml_file
    data = reader(path, max_bytes=MAX_ARCH_FILE_BYTES, what='arch file')
    return SubnetConfig.from_dict(_unwrap_arch(data, display_path(path)))


def _unwrap_arch(data: Any, where: str) -> Mapping[str, Any]:
    data = unwrap_arch_data(data, where, 'resolution, width, depth, kernel_size, expand_ratio')
    try:
        return SubnetConfig.from_dict(data).to_dict()
    except (ValueError, TypeError) as e:
        raise ValueError(f'{where}: not an arch: {short_message(e, 500)}') from None
