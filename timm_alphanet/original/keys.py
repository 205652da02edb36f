"""Original AlphaNet/AttentiveNAS supernet keys <-> ours (timm's layout), both directions from one table.

:func:`convert_original_state_dict` renames the original supernet keys to ours and drops what never runs
(``bn_tracking`` buffers, 1x1 shortcut convs whose input and output widths never differ).
:func:`check_converted_state_dict` compares the result with a model's ``state_dict()`` key by key.
"""
import collections
import functools
import operator
import re
from typing import Any, Callable, Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..spaces import SearchSpace

__all__ = ['convert_original_state_dict', 'check_converted_state_dict', 'layout_from_supernet_config',
           'strip_prefix']

_MAX_LISTED = 50  # names listed per category in error messages


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = 'module.') -> 'collections.OrderedDict[str, Any]':
    out: 'collections.OrderedDict[str, Any]' = collections.OrderedDict()
    for key, value in state_dict.items():
        new_key = key[len(prefix):] if key.startswith(prefix) else key
        if new_key in out:
            raise ValueError(f"state dict holds both '{new_key}' and '{prefix}{new_key}'")
        out[new_key] = value
    return out


def layout_from_supernet_config(supernet_config: Mapping[str, Any]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Block layout of an original supernet from its ``supernet_config`` (the original YAML schema).

    Args:
        supernet_config: mapping with ``first_conv``, ``mb1`` ... ``mbN`` entries (each with ``c``, and
            ``d`` for the stages), as in the original YAML files or a checkpoint's ``args``.

    Returns:
        ``(stage_depths, shortcut_stages)``: the number of blocks per stage (max depth) and the stages
        whose first block can change width (so its 1x1 shortcut conv can run).
    """
    # one reader of the schema: the same rules as the models
    space = SearchSpace.from_dict(supernet_config)
    depths = tuple(max(stage.depths) for stage in space.stages)
    needs = space.first_block_needs_shortcut_conv()
    return depths, tuple(i for i, n in enumerate(needs) if n)


_BN_FIELDS = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
# (original suffix within blocks.{n}.mobile_inverted_conv, ours within blocks.{s}.{j}); {bn} = a BN field
_MB_NAMES = [
    ('inverted_bottleneck.conv.conv.weight', 'conv_pw.weight'),
    ('inverted_bottleneck.bn.bn.{bn}', 'bn1.{bn}'),
    ('depth_conv.conv.conv.weight', 'conv_dw.weight'),
    ('depth_conv.bn.bn.{bn}', 'bn2.{bn}'),
    ('depth_conv.se.fc.reduce.{wb}', 'se.fc1.{wb}'),
    ('depth_conv.se.fc.expand.{wb}', 'se.fc2.{wb}'),
    ('point_linear.conv.conv.weight', 'conv_pwl.weight'),
    ('point_linear.bn.bn.{bn}', 'bn3.{bn}'),
]


def _name_rule(src: str, dst: str):
    """(regex matching `src`, replacement giving `dst`) with {bn}/{wb} as the captured field."""
    field = _BN_FIELDS if '{bn}' in src else r'(weight|bias)'
    pattern = re.escape(src).replace(re.escape('{bn}'), field).replace(re.escape('{wb}'), field)
    return re.compile(pattern), dst.replace('{bn}', r'\1').replace('{wb}', r'\1')


_MB_PARTS = [_name_rule(o, t) for o, t in _MB_NAMES]
_MB_PARTS_INVERSE = [_name_rule(t, o) for o, t in _MB_NAMES]

# keys outside the MBConv blocks, original -> ours; {head} = the number of stages (the head's 1x1 expansion
# is our last block)
_TOP_NAMES = [
    ('first_conv.conv.conv.weight', 'conv_stem.weight'),
    ('first_conv.bn.bn.{bn}', 'bn1.{bn}'),
    ('last_conv.final_expand_layer.conv.conv.weight', 'blocks.{head}.0.conv.weight'),
    ('last_conv.final_expand_layer.bn.bn.{bn}', 'blocks.{head}.0.bn1.{bn}'),
    ('last_conv.feature_mix_layer.conv.conv.weight', 'conv_head.weight'),
    ('classifier.linear.linear.{wb}', 'classifier.{wb}'),
]


@functools.lru_cache(maxsize=None)
def _top_rules(num_stages: int, inverse: bool):
    pairs = [(o, t.replace('{head}', str(num_stages))) for o, t in _TOP_NAMES]
    return [_name_rule(t, o) if inverse else _name_rule(o, t) for o, t in pairs]
_BLOCK_RE = re.compile(r'blocks\.(\d+)\.(.+)')
_BN_TRACKING_RE = re.compile(r'(.+\.)?bn_tracking\.\d+\.(.+)')


def _map_key(key: str, stage_of_block: Sequence[Tuple[int, int]], num_stages: int,
             shortcut_stages: Optional[Collection[int]]) -> Optional[str]:
    """Returns our key, or None for a key dropped on purpose; raises KeyError if the key is not recognised."""
    if _BN_TRACKING_RE.fullmatch(key):
        return None  # bn_tracking buffers are never used in forward
    for pattern, repl in _top_rules(num_stages, inverse=False):
        if pattern.fullmatch(key):
            return pattern.sub(repl, key)
    m = _BLOCK_RE.fullmatch(key)
    if m:
        n, rest = int(m.group(1)), m.group(2)
        if n >= len(stage_of_block):
            raise KeyError(f'{key} (block {n}, but stage_depths give {len(stage_of_block)} blocks)')
        s, j = stage_of_block[n]
        if rest == 'shortcut.conv.conv.weight':
            if j == 0 and (shortcut_stages is None or s in shortcut_stages):
                return f'blocks.{s}.{j}.shortcut.conv.weight'
            return None  # input and output widths never differ here, so the conv never runs
        if rest.startswith('mobile_inverted_conv.'):
            rest = rest[len('mobile_inverted_conv.'):]
            for pattern, repl in _MB_PARTS:
                if pattern.fullmatch(rest):
                    return f'blocks.{s}.{j}.' + pattern.sub(repl, rest)
    raise KeyError(key)


def convert_original_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        stage_depths: Sequence[int],
        shortcut_stages: Optional[Iterable[int]] = None,
) -> 'collections.OrderedDict[str, torch.Tensor]':
    """Renames an original supernet state dict to our supernet's (timm-style) keys.

    Original block ``n`` becomes ``blocks.{s}.{j}`` (stage ``s``, index ``j`` within it) and the
    head's expansion layer becomes ``blocks.{len(stage_depths)}.0``. ``bn_tracking`` buffers are
    dropped, and so are shortcut convs that never run (every block but a stage's first, and first blocks
    of stages not in ``shortcut_stages``). Tensors are passed through unchanged (no copies).

    Args:
        state_dict: original keys, with or without the ``module.`` prefix.
        stage_depths: blocks per stage, i.e. the max depth of each stage of the space
            (``(2, 5, 6, 6, 8, 8, 2)`` for AlphaNet); see :func:`layout_from_supernet_config`.
        shortcut_stages: stages whose first block keeps its 1x1 shortcut conv (those whose input and
            output width choices can differ). None keeps it for every stage, as for AlphaNet's space.

    Returns:
        OrderedDict of our keys to the original tensors.

    Raises:
        ValueError: keys that are not part of the original layout (listed by name), two keys mapping to
            the same name, or invalid ``stage_depths``.
    """
    try:
        depths = [operator.index(d) for d in stage_depths]
    except TypeError:
        depths = []
    if not depths or any(d < 1 for d in depths):
        raise ValueError(f'stage_depths must be positive integers, got {list(stage_depths)}')
    stages = None if shortcut_stages is None else frozenset(int(s) for s in shortcut_stages)
    stage_of_block = [(s, j) for s, d in enumerate(depths) for j in range(d)]

    converted: 'collections.OrderedDict[str, torch.Tensor]' = collections.OrderedDict()
    source: Dict[str, str] = {}
    unrecognised: List[str] = []
    for key, tensor in strip_prefix(state_dict).items():
        try:
            new_key = _map_key(key, stage_of_block, len(depths), stages)
        except KeyError as e:
            unrecognised.append(str(e.args[0]))
            continue
        if new_key is None:
            continue
        if new_key in converted:
            raise ValueError(f"original keys '{source[new_key]}' and '{key}' both map to '{new_key}'")
        converted[new_key] = tensor
        source[new_key] = key
    if unrecognised:
        raise ValueError(
            'keys not recognised as part of an original AlphaNet/AttentiveNAS supernet '
            f'(stage_depths={depths}): {_list_names(unrecognised)}')
    return converted


def _shape_of(value: Any) -> Tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, 'shape') else tuple(value)


def _list_names(names: Sequence[str]) -> str:
    shown = ', '.join(names[:_MAX_LISTED])
    more = f', ... and {len(names) - _MAX_LISTED} more' if len(names) > _MAX_LISTED else ''
    return f'({len(names)}) {shown}{more}'


def check_converted_state_dict(converted: Mapping[str, Any], target: Union[Mapping[str, Any], torch.nn.Module]) -> None:
    """Checks every key and shape of a converted state dict against a target model.

    Args:
        converted: output of :func:`convert_original_state_dict`.
        target: the model, its ``state_dict()``, or a mapping of key to shape.

    Raises:
        ValueError: naming the missing keys, unexpected keys and shape mismatches (up to 50 of each).
    """
    if isinstance(target, torch.nn.Module):
        target = target.state_dict()
    problems = _mismatch_problems(converted, target)
    if problems:
        raise ValueError('converted original checkpoint does not match the model:\n  ' + '\n  '.join(problems))


def _mismatch_problems(converted: Mapping[str, Any], target: Mapping[str, Any],
                       name: Callable[[str], str] = str) -> List[str]:
    """Missing keys, unexpected keys and shape mismatches, each key shown as `name(key)`."""
    missing = [name(k) for k in target if k not in converted]
    unexpected = [name(k) for k in converted if k not in target]
    mismatched = [f'{name(k)}: checkpoint {_shape_of(v)} vs model {_shape_of(target[k])}'
                  for k, v in converted.items() if k in target and _shape_of(v) != _shape_of(target[k])]
    problems = []
    if missing:
        problems.append(f'missing keys {_list_names(missing)}')
    if unexpected:
        problems.append(f'unexpected keys {_list_names(unexpected)}')
    if mismatched:
        problems.append(f'shape mismatches {_list_names(mismatched)}')
    return problems


# ---------------------------------------------------------------------------------------------------------
# our key -> original key (for error messages that name both)


def _original_key(key: str, stage_depths: Sequence[int]) -> Optional[str]:
    """The original supernet key (without ``module.``) that maps to our ``key``; None if there is none."""
    num_stages = len(stage_depths)
    for pattern, repl in _top_rules(num_stages, inverse=True):
        if pattern.fullmatch(key):
            return pattern.sub(repl, key)
    m = re.fullmatch(r'blocks\.(\d+)\.(\d+)\.(.+)', key)
    if m:
        s, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if s >= num_stages or j >= stage_depths[s]:
            return None
        n = sum(stage_depths[:s]) + j
        if rest == 'shortcut.conv.weight':
            return f'blocks.{n}.shortcut.conv.conv.weight'
        for pattern, repl in _MB_PARTS_INVERSE:
            if pattern.fullmatch(rest):
                return f'blocks.{n}.mobile_inverted_conv.' + pattern.sub(repl, rest)
    return None


def _with_original_name(key: str, stage_depths: Sequence[int]) -> str:
    original = _original_key(key, stage_depths)
    return key if original is None else f"{key} (original 'module.{original}')"


def _check_against_model(converted: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                         stage_depths: Sequence[int], path: str) -> None:
    """As :func:`check_converted_state_dict`, with each of our keys followed by its original name."""
    problems = _mismatch_problems(converted, target, lambda k: _with_original_name(k, stage_depths))
    if problems:
        raise ValueError(
            f'{path}: the checkpoint does not match the supernet of its search space (is --config / config= '
            f'the space it was trained with?):\n  ' + '\n  '.join(problems))
