"""Reading original AlphaNet/AttentiveNAS checkpoints without running code from them, and loading them.

The original saves ``{'epoch', 'args', 'state_dict', 'optimizer', 'lr_scheduler'}`` with ``torch.save``
(often in the legacy non-zip format). :func:`read_original_checkpoint` unpickles it with the restricted
unpickler (`unpickler.py`); :func:`load_original_checkpoint` renames the keys (`keys.py`), checks every key
and shape against our supernet and returns it with the weights loaded.
"""
import io
import os
import tarfile
import zipfile
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..spaces import SearchSpace
from ..utils import (
    MAX_DEPTH, MAX_NODES, bounded_repr, check_tree, display_path, regular_file_size, short_message)
from .keys import _check_against_model, _with_original_name, convert_original_state_dict, strip_prefix
from .unpickler import UnsafeCheckpointError, restricted_pickle, storage_limit

__all__ = ['read_original_checkpoint', 'load_original_checkpoint']

CheckpointSource = Union[str, os.PathLike, BinaryIO]

# Values in the whole unpickled checkpoint, each reference to a shared object counted with its subtree. The
# AlphaNet supernet's training checkpoint has ~10k (1468 tensors, the optimizer's state, ~200 in args).
MAX_CHECKPOINT_NODES = 2_000_000
MAX_ARGS_NODES = MAX_NODES  # args: the training YAML plus command-line values, a few hundred
MAX_ARGS_BYTES = 16 << 20  # text in args (strings counted at every reference)


def _plain(obj: Any, memo: Dict[int, Any]) -> Any:
    """Dict subclasses (the config stubs) as plain dicts, lists and tuples kept; each shared object converted once.

    Recursion is safe: `check_tree` has bounded the depth before this runs.
    """
    if not isinstance(obj, (dict, list, tuple)):
        return obj
    done = memo.get(id(obj))
    if done is not None:
        return done[1]
    if isinstance(obj, dict):
        out: Any = {key: _plain(value, memo) for key, value in obj.items()}
    elif isinstance(obj, list):
        out = [_plain(value, memo) for value in obj]
    else:
        out = tuple(_plain(value, memo) for value in obj)
    memo[id(obj)] = (obj, out)  # keeps obj alive, so its id is not reused
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _source_name(path: Any) -> str:
    if isinstance(path, (str, os.PathLike)):
        return display_path(path)
    return display_path(getattr(path, 'name', None) or f'<{type(path).__name__}>')


def _open_source(path: CheckpointSource) -> Tuple[BinaryIO, int, bool]:
    """(binary file at the checkpoint's start, bytes from there to the end, whether we opened it)."""
    if isinstance(path, (str, os.PathLike)):
        size = regular_file_size(path, 'checkpoint')
        return open(path, 'rb'), size, True
    if not all(hasattr(path, attr) for attr in ('read', 'seek', 'tell')):
        raise TypeError(f'checkpoint must be a path or a seekable binary file object, got {type(path).__name__}')
    start = path.tell()
    size = path.seek(0, io.SEEK_END) - start
    path.seek(start)
    return path, size, False


def _check_container(f: BinaryIO, size: int, name: str) -> None:
    """Refuses what torch.load would read unsafely or unboundedly: unknown formats, tar, forged zip sizes."""
    start = f.tell()
    head = f.read(4)
    f.seek(start)
    if size == 0:
        raise ValueError(f'{name}: empty file (0 bytes), not a checkpoint')
    if head.startswith(b'PK\x03\x04'):  # torch.save's zip format (how torch.load tells it apart)
        try:
            with zipfile.ZipFile(f) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, ValueError, OverflowError, EOFError, NotImplementedError) as e:
            raise ValueError(f'{name}: not a readable checkpoint (a broken or truncated zip archive: {e})') from None
        finally:
            f.seek(start)
        if any(i.filename.endswith('constants.pkl') for i in infos):
            # torch.load hands TorchScript archives to torch.jit.load, which our unpickler does not guard
            raise ValueError(f'{name}: is a TorchScript archive, not a checkpoint; it is not loaded')
        declared = sum(i.file_size for i in infos)
        if declared > size:  # torch.save stores entries uncompressed: their sizes add up to less than the file
            raise ValueError(f'{name}: the zip archive declares {declared} bytes of content in a file of {size} '
                             f'bytes (forged, or not written by torch.save); it is not loaded')
        return
    if head[:1] != b'\x80':  # torch.save's legacy format starts with a pickle (protocol 2)
        raise ValueError(f'{name}: not a PyTorch checkpoint (neither a zip archive nor a pickle; it starts with '
                         f'{head!r})')
    f.seek(start)
    try:
        # torch.load would try the pre-0.4 tar format first, which unpacks members and sizes storages from them
        if tarfile.is_tarfile(f):
            raise ValueError(f'{name}: a tar archive (the pre-0.4 checkpoint format), which is not supported')
    finally:
        f.seek(start)


def _load(f: BinaryIO, size: int, name: str) -> Any:
    """torch.load with the restricted unpickler; any failure to parse the bytes is a one-line ValueError."""
    try:
        with storage_limit(size):
            return torch.load(f, map_location='cpu', weights_only=False, pickle_module=restricted_pickle)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f'{name}: {e}') from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- whatever a truncated or forged file makes torch/pickle raise
        text = ' '.join(str(e).split())[:300] or 'no details'
        raise ValueError(f'{name}: not a readable checkpoint (truncated or corrupt: {type(e).__name__}: '
                         f'{text})') from None


def read_original_checkpoint(path: CheckpointSource) -> Dict[str, Any]:
    """Reads an original AlphaNet/AttentiveNAS checkpoint without running code from it.

    Accepts the original training checkpoint (``{'epoch', 'args', 'state_dict', 'optimizer',
    'lr_scheduler'}``, legacy or zip serialization), a dict with a ``state_dict`` or ``model`` entry, or
    a bare state dict. The file may be hostile: only plain data and dense tensors are unpickled
    (`unpickler.py`), the tensor data it declares must fit in the file, and the unpickled object must be
    a bounded tree (shared objects counted at every reference, depth at most ``MAX_DEPTH``).

    Args:
        path: file path or a seekable binary file object.

    Returns:
        A dict with ``state_dict`` (an OrderedDict of tensors, ``module.`` prefix removed), ``args``
        (the training config as plain nested dicts, or None) and ``epoch`` (or None), plus any other
        top-level entries of the file (``optimizer``, ``lr_scheduler``) as loaded.

    Raises:
        TypeError: `path` is neither a path nor a binary file object.
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file references a global or call outside the allow-list (nothing was run).
        ValueError: not a readable checkpoint (empty, truncated, corrupt, a directory, a TorchScript or tar
            archive), declared sizes beyond the file, a value too large or deep, or no state dict found.
            Each message starts with the file name.
    """
    name = _source_name(path)
    f, size, opened = _open_source(path)
    try:
        _check_container(f, size, name)
        obj = _load(f, size, name)
    finally:
        if opened:
            f.close()
    check_tree(obj, name, max_nodes=MAX_CHECKPOINT_NODES, max_depth=MAX_DEPTH)

    if _is_state_dict(obj):
        return {'state_dict': strip_prefix(obj), 'args': None, 'epoch': None}
    if not isinstance(obj, Mapping):
        raise ValueError(f'{name}: expected a dict in the checkpoint, found {type(obj).__name__}')
    for entry in ('state_dict', 'model'):
        if _is_state_dict(obj.get(entry)):
            break
    else:
        keys = sorted(map(str, list(obj)[:50]))
        raise ValueError(f"{name}: no state dict found in the checkpoint (top-level keys: {keys}); expected a "
                         f"'state_dict' or 'model' entry of tensors, or a bare state dict")
    out: Dict[str, Any] = {k: v for k, v in obj.items() if k not in ('state_dict', 'model', 'args')}
    out['state_dict'] = strip_prefix(obj[entry])
    args = obj.get('args')
    if args is not None:
        check_tree(args, f'{name}: args', max_nodes=MAX_ARGS_NODES, max_depth=MAX_DEPTH, max_bytes=MAX_ARGS_BYTES)
        args = _plain(dict(args) if isinstance(args, Mapping) else args, {})
    out['args'] = args
    out.setdefault('epoch', None)
    return out


def _space_differences(a: Any, b: Any) -> List[str]:
    """Sections (stem, stages, head, resolutions) in which two SearchSpaces differ, for error messages."""
    da, db = a.to_dict(), b.to_dict()
    diffs = [f'{k}: {bounded_repr(da.get(k))} vs {bounded_repr(db.get(k))}'
             for k in dict.fromkeys([*da, *db]) if da.get(k) != db.get(k)]
    return diffs if len(diffs) <= 10 else [*diffs[:10], f'... ({len(diffs) - 10} more)']


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
                    f"{path}: cannot read the checkpoint's args['supernet_config'] ({short_message(e, 500)}); pass "
                    f"the original YAML with config= (--config)") from None
            stored_space = None  # unreadable, and an explicit config is given: use that

    if config is None:
        return ALPHANET_SPACE if stored_space is None else stored_space
    if isinstance(config, (str, os.PathLike)):
        regular_file_size(config, 'config file')  # 'config file not found: ...', or not a file
    space = SearchSpace.coerce(config)  # a SearchSpace, a supernet_config dict or an original YAML path
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
        TypeError: ``path`` is neither a path nor a binary file object.
        FileNotFoundError: ``path`` or the config file does not exist.
        UnsafeCheckpointError: the file asks for a Python global or call outside the allow-list (nothing was run).
        ValueError: an unreadable file (see :func:`read_original_checkpoint`) or config YAML; unrecognised,
            missing or unexpected keys or shape mismatches (each listed by name, ours and the original's), or
            a config that disagrees with the checkpoint's.
    """
    import timm

    from .. import models  # noqa: F401  (registers alphanet_supernet; imported here to keep this module light)

    name = _source_name(path)
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
