"""Reading and converting checkpoints of the original AlphaNet / AttentiveNAS code.

The original saves ``{'epoch', 'args', 'state_dict', 'optimizer', 'lr_scheduler'}`` with ``torch.save``
(often in the legacy non-zip format), where ``args`` is a pickled ``utils.config.Config`` (a ``dict``
subclass). ``torch.load(weights_only=True)`` cannot rebuild dict subclasses, and full unpickling would run
whatever the file asks for. So :func:`read_original_checkpoint` unpickles with a restricted module whose
``find_class`` only hands out what a tensor checkpoint needs and maps the two ``utils.config`` classes to
local dict stubs; anything else is refused before any of it can run.

:func:`convert_original_state_dict` renames the original supernet keys to ours (timm's layout) and drops
what never runs (``bn_tracking`` buffers, 1x1 shortcut convs whose input and output widths never differ).
:func:`check_converted_state_dict` compares the result with a model's ``state_dict()`` key by key.
:func:`load_original_checkpoint` does all of this and returns our supernet with the weights loaded.
"""
import _compat_pickle
import collections
import functools
import io
import operator
import os
import pickle
import re
import types
import zipfile
from typing import Any, BinaryIO, Callable, Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .config import SearchSpace

__all__ = [
    'UnsafeCheckpointError', 'restricted_pickle', 'read_original_checkpoint', 'convert_original_state_dict',
    'check_converted_state_dict', 'layout_from_supernet_config', 'load_original_checkpoint',
]

_MAX_LISTED = 50  # names listed per category in error messages


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asks for a Python global that a plain tensor checkpoint never needs."""


# Local stand-ins for the original ``utils.config`` classes. They are plain dicts: nothing of the
# original class (its __init__ reads a YAML file) is needed to recover the values.
class _AttrDictStub(dict):
    """Stands in for ``utils.config.AttrDict`` while unpickling."""

    def __setstate__(self, state: Any) -> None:
        # The original sets ``self.__dict__ = self``, so the pickled state is normally the object itself
        # (already filled by SETITEMS). Anything else is merged without overriding items.
        if isinstance(state, dict) and state is not self:
            for key, value in state.items():
                self.setdefault(key, value)


class _ConfigStub(_AttrDictStub):
    """Stands in for ``utils.config.Config`` while unpickling."""


class _NamespaceStub(_AttrDictStub):
    """Stands in for ``argparse.Namespace``: its pickled ``__dict__`` state becomes the dict items."""


def _build_allowed_globals() -> Dict[Tuple[str, str], Any]:
    allowed: Dict[Tuple[str, str], Any] = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('collections', 'Counter'): collections.Counter,
        ('builtins', 'set'): set,
        ('builtins', 'frozenset'): frozenset,
        ('builtins', 'complex'): complex,
        ('builtins', 'bytearray'): bytearray,
        ('builtins', 'slice'): slice,
        ('_codecs', 'encode'): __import__('_codecs').encode,  # how protocol 2 stores bytes
        ('torch', 'Size'): torch.Size,
        ('torch', 'device'): torch.device,
        ('torch', 'Tensor'): torch.Tensor,
        ('torch._tensor', '_rebuild_from_type_v2'): torch._tensor._rebuild_from_type_v2,
        ('torch.nn.parameter', 'Parameter'): torch.nn.Parameter,
        ('torch.storage', 'TypedStorage'): torch.storage.TypedStorage,
        ('torch.storage', 'UntypedStorage'): torch.storage.UntypedStorage,
        ('argparse', 'Namespace'): _NamespaceStub,
    }
    for name in ('_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_tensor_v3', '_rebuild_parameter',
                 '_rebuild_parameter_with_state', '_rebuild_qtensor', '_rebuild_sparse_tensor',
                 '_rebuild_meta_tensor_no_storage', '_rebuild_device_tensor_from_cpu_tensor',
                 '_rebuild_nested_tensor'):
        fn = getattr(torch._utils, name, None)  # some only exist in newer torch versions
        if fn is not None:
            allowed[('torch._utils', name)] = fn
    layout_fn = getattr(torch.serialization, '_get_layout', None)
    if layout_fn is not None:
        allowed[('torch.serialization', '_get_layout')] = layout_fn
    # dtypes (torch.float32, ...) and quantization schemes are pickled as globals of ``torch``
    for name, value in vars(torch).items():  # vars(), not getattr(): no lazy submodule imports
        if isinstance(value, (torch.dtype, torch.qscheme)):
            allowed[('torch', name)] = value
    return allowed


_ALLOWED_GLOBALS = _build_allowed_globals()


def _numpy_global(module: str, name: str) -> Any:
    """numpy scalars, dtypes and arrays (they may appear in ``args``): these rebuild data, never call code."""
    if module not in ('numpy', 'numpy.dtypes', 'numpy.core.multiarray', 'numpy._core.multiarray'):
        return None
    import numpy  # only imported when a checkpoint actually holds numpy data
    if module == 'numpy':
        return {'dtype': numpy.dtype, 'ndarray': numpy.ndarray}.get(name)
    if module == 'numpy.dtypes':
        found = getattr(getattr(numpy, 'dtypes', None), name, None)
        return found if isinstance(found, type) and issubclass(found, numpy.dtype) else None
    if name not in ('scalar', '_reconstruct'):
        return None
    core = getattr(numpy, '_core', None)  # numpy >= 2 (numpy.core is a deprecated alias there)
    return getattr((core if core is not None else numpy.core).multiarray, name)


def _is_original_config_module(module: str) -> bool:
    return module == 'utils.config' or module.endswith('.utils.config')


def _find_allowed_global(module: str, name: str) -> Any:
    # Python 2 pickles name builtins '__builtin__' etc.; the stock find_class maps these, so do we
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]

    if _is_original_config_module(module):
        if name == 'Config':
            return _ConfigStub
        if name == 'AttrDict':
            return _AttrDictStub
    found = _ALLOWED_GLOBALS.get((module, name))
    if found is None:
        found = _numpy_global(module, name)
    if found is not None:
        return found
    raise UnsafeCheckpointError(
        f"refusing to load global '{module}.{name}': an original AlphaNet/AttentiveNAS checkpoint only "
        f"needs tensors, plain containers and the utils.config classes. The file may try to run code; "
        f"nothing from it was executed.")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (see ``_find_allowed_global``)."""

    def find_class(self, module: str, name: str) -> Any:
        return _find_allowed_global(module, name)


def _restricted_load(file: BinaryIO, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# A stand-in for the ``pickle`` module, for ``torch.load(..., pickle_module=restricted_pickle)``. torch
# subclasses its ``Unpickler`` for both formats and calls its ``load`` for the legacy format's headers.
restricted_pickle = types.ModuleType('timm_alphanet.original.restricted_pickle')
restricted_pickle.Unpickler = _RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.loads = _restricted_loads
restricted_pickle.UnpicklingError = pickle.UnpicklingError


def _to_plain(obj: Any, _active: Optional[set] = None) -> Any:
    """Recursively turns dict subclasses (the config stubs) into plain dicts, lists and tuples kept."""
    _active = set() if _active is None else _active
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in _active:
            raise ValueError('checkpoint args contain a reference cycle')
        _active.add(id(obj))
        if isinstance(obj, dict):
            out: Any = {key: _to_plain(value, _active) for key, value in obj.items()}
        elif isinstance(obj, list):
            out = [_to_plain(value, _active) for value in obj]
        else:
            out = tuple(_to_plain(value, _active) for value in obj)
        _active.discard(id(obj))
        return out
    return obj


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str = 'module.') -> 'collections.OrderedDict[str, Any]':
    out: 'collections.OrderedDict[str, Any]' = collections.OrderedDict()
    for key, value in state_dict.items():
        new_key = key[len(prefix):] if key.startswith(prefix) else key
        if new_key in out:
            raise ValueError(f"state dict holds both '{new_key}' and '{prefix}{new_key}'")
        out[new_key] = value
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _is_torchscript_archive(path: Union[str, os.PathLike, BinaryIO]) -> bool:
    # torch.load hands TorchScript archives to torch.jit.load, which our unpickler does not guard
    start = None if isinstance(path, (str, os.PathLike)) else path.tell()
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith('constants.pkl') for name in archive.namelist())
    finally:
        if start is not None:
            path.seek(start)


def read_original_checkpoint(path: Union[str, os.PathLike, BinaryIO]) -> Dict[str, Any]:
    """Reads an original AlphaNet/AttentiveNAS checkpoint without running code from it.

    Accepts the original training checkpoint (``{'epoch', 'args', 'state_dict', 'optimizer',
    'lr_scheduler'}``, legacy or zip serialization), a dict with a ``state_dict`` or ``model`` entry, or
    a bare state dict.

    Args:
        path: file path or a binary file object.

    Returns:
        A dict with ``state_dict`` (an OrderedDict of tensors, ``module.`` prefix removed), ``args``
        (the training config as plain nested dicts, or None) and ``epoch`` (or None), plus any other
        top-level entries of the file (``optimizer``, ``lr_scheduler``) as loaded.

    Raises:
        UnsafeCheckpointError: the file references a global outside the allow-list (nothing was run).
        ValueError: no state dict was found in the file, or it is a TorchScript archive.
    """
    if _is_torchscript_archive(path):
        raise ValueError(f'{path} is a TorchScript archive, not a checkpoint; it is not loaded')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=False, pickle_module=restricted_pickle)
    except UnsafeCheckpointError as e:
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, 'name', repr(path))
        raise UnsafeCheckpointError(f'{name}: {e}') from None

    if _is_state_dict(obj):
        return {'state_dict': _strip_prefix(obj), 'args': None, 'epoch': None}
    if not isinstance(obj, Mapping):
        raise ValueError(f'expected a dict in the checkpoint, found {type(obj).__name__}')
    for entry in ('state_dict', 'model'):
        if _is_state_dict(obj.get(entry)):
            break
    else:
        raise ValueError(f"no state dict found in the checkpoint (top-level keys: {sorted(map(str, obj))}); "
                         f"expected a 'state_dict' or 'model' entry of tensors, or a bare state dict")
    out: Dict[str, Any] = {k: v for k, v in obj.items() if k not in ('state_dict', 'model', 'args')}
    out['state_dict'] = _strip_prefix(obj[entry])
    args = obj.get('args')
    out['args'] = None if args is None else _to_plain(dict(args) if isinstance(args, Mapping) else args)
    out.setdefault('epoch', None)
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
    for key, tensor in _strip_prefix(state_dict).items():
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


def _space_differences(a: Any, b: Any) -> List[str]:
    """Sections (stem, stages, head, resolutions) in which two SearchSpaces differ, for error messages."""
    da, db = a.to_dict(), b.to_dict()
    return [f'{k}: {da.get(k)!r} vs {db.get(k)!r}' for k in list(dict.fromkeys([*da, *db])) if da.get(k) != db.get(k)]


def _resolve_space(config: Any, args: Optional[Mapping[str, Any]], path: str) -> Any:
    """The SearchSpace to build: from ``config``, else the checkpoint's ``args['supernet_config']``, else AlphaNet."""
    from .archs import ALPHANET_SPACE

    stored = args.get('supernet_config') if isinstance(args, Mapping) else None
    stored_space = None
    if stored is not None:
        try:
            stored_space = SearchSpace.from_dict(stored)
        except (ValueError, TypeError, KeyError) as e:
            if config is None:
                raise ValueError(
                    f"{path}: cannot read the checkpoint's args['supernet_config'] ({e}); pass the original "
                    f"YAML with config= (--config)") from e
            stored_space = None  # unreadable, and an explicit config is given: use that

    if config is None:
        return ALPHANET_SPACE if stored_space is None else stored_space
    if isinstance(config, SearchSpace):
        space = config
    elif isinstance(config, (str, os.PathLike)):
        if not os.path.isfile(config):
            raise FileNotFoundError(f'config file not found: {os.fspath(config)}')
        space = SearchSpace.from_yaml(config)
    elif isinstance(config, Mapping):
        space = SearchSpace.from_dict(config)
    else:
        raise TypeError(f'config must be an original YAML path, a SearchSpace or a supernet_config dict, '
                        f'got {type(config).__name__}')
    if stored_space is not None and stored_space != space:
        raise ValueError(
            f"{path}: the given config disagrees with the supernet_config stored in the checkpoint's args: "
            + '; '.join(_space_differences(space, stored_space)) + ' (given vs stored). Pass config=None to use '
            'the stored one, or fix the config.')
    return space


def load_original_checkpoint(
        path: Union[str, os.PathLike, BinaryIO],
        config: Optional[Union[str, os.PathLike, Any]] = None,
) -> Any:
    """Builds our supernet (``alphanet_supernet``) and loads an original AlphaNet/AttentiveNAS checkpoint.

    The file is read without running code from it (:func:`read_original_checkpoint`), its keys are
    renamed (:func:`convert_original_state_dict`), and every key and shape is checked against the built
    supernet before loading with ``strict=True``.

    Args:
        path: the original checkpoint (legacy or zip ``torch.save``; a file path or binary file object).
        config: the search space the checkpoint was trained with: a path to an original-schema YAML (its
            ``supernet_config`` section), a :class:`~timm_alphanet.SearchSpace` or a ``supernet_config``
            dict. None: the ``supernet_config`` stored in the checkpoint's ``args`` if there is one, else
            the AlphaNet space. An explicit config that disagrees with the stored one is an error.

    Returns:
        The :class:`~timm_alphanet.models.supernet.AlphaNetSupernet` in eval mode, its max subnet active.
        The number of classes (and input channels) come from the checkpoint's tensor shapes. The BN
        running statistics are the checkpoint's: the original trains with BN momentum 0, so calibrate
        each subnet (:func:`timm_alphanet.calibrate_bn`) before evaluating it.

    Raises:
        FileNotFoundError: ``path`` or the config file does not exist.
        UnsafeCheckpointError: the file asks for a Python global outside the allow-list (nothing was run).
        ValueError: unrecognised, missing or unexpected keys or shape mismatches (each listed by name,
            ours and the original's), or a config that disagrees with the checkpoint's.
    """
    import timm

    from . import models  # noqa: F401  (registers alphanet_supernet; imported here to keep this module light)

    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, 'name', repr(path))
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {name}')
    ckpt = read_original_checkpoint(path)
    space = _resolve_space(config, ckpt.get('args'), name)

    depths = [max(stage.depths) for stage in space.stages]
    shortcut_stages = [i for i, needed in enumerate(space.first_block_needs_shortcut_conv()) if needed]
    try:
        converted = convert_original_state_dict(ckpt['state_dict'], depths, shortcut_stages)
    except ValueError as e:
        raise ValueError(f'{name}: {e}') from None

    for key in ('classifier.weight', 'conv_stem.weight'):
        if key not in converted or converted[key].ndim < 2:
            raise ValueError(f"{name}: missing keys (1) {_with_original_name(key, depths)}; it gives the "
                             f"number of {'classes' if key.startswith('classifier') else 'input channels'}")
    num_classes = int(converted['classifier.weight'].shape[0])
    in_chans = int(converted['conv_stem.weight'].shape[1])

    supernet = timm.create_model('alphanet_supernet', space=space, num_classes=num_classes, in_chans=in_chans)
    _check_against_model(converted, supernet.state_dict(), depths, name)
    supernet.load_state_dict(converted, strict=True)
    return supernet.eval()
