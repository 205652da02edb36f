"""Reading original AlphaNet/AttentiveNAS checkpoints without running code from them, and loading them.

The original saves ``{'epoch', 'args', 'state_dict', 'optimizer', 'lr_scheduler'}`` with ``torch.save``
(often in the legacy non-zip format). :func:`read_original_checkpoint` unpickles it with the restricted
unpickler (`unpickler.py`); :func:`load_original_checkpoint` renames the keys (`keys.py`), checks every key
and shape against our supernet and returns it with the weights loaded.
"""
import os
import zipfile
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Union

import torch

from ..spaces import SearchSpace
from .keys import _check_against_model, _with_original_name, convert_original_state_dict, strip_prefix
from .unpickler import UnsafeCheckpointError, restricted_pickle

__all__ = ['read_original_checkpoint', 'load_original_checkpoint']


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
        return {'state_dict': strip_prefix(obj), 'args': None, 'epoch': None}
    if not isinstance(obj, Mapping):
        raise ValueError(f'expected a dict in the checkpoint, found {type(obj).__name__}')
    for entry in ('state_dict', 'model'):
        if _is_state_dict(obj.get(entry)):
            break
    else:
        raise ValueError(f"no state dict found in the checkpoint (top-level keys: {sorted(map(str, obj))}); "
                         f"expected a 'state_dict' or 'model' entry of tensors, or a bare state dict")
    out: Dict[str, Any] = {k: v for k, v in obj.items() if k not in ('state_dict', 'model', 'args')}
    out['state_dict'] = strip_prefix(obj[entry])
    args = obj.get('args')
    out['args'] = None if args is None else _to_plain(dict(args) if isinstance(args, Mapping) else args)
    out.setdefault('epoch', None)
    return out


def _space_differences(a: Any, b: Any) -> List[str]:
    """Sections (stem, stages, head, resolutions) in which two SearchSpaces differ, for error messages."""
    da, db = a.to_dict(), b.to_dict()
    return [f'{k}: {da.get(k)!r} vs {db.get(k)!r}' for k in list(dict.fromkeys([*da, *db])) if da.get(k) != db.get(k)]


def _resolve_space(config: Any, args: Optional[Mapping[str, Any]], path: str) -> Any:
    """The SearchSpace to build: from ``config``, else the checkpoint's ``args['supernet_config']``, else AlphaNet."""
    from ..archs import ALPHANET_SPACE

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

    from .. import models  # noqa: F401  (registers alphanet_supernet; imported here to keep this module light)

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
