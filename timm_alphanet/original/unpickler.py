"""A restricted unpickler for original AlphaNet/AttentiveNAS checkpoints: tensors and plain containers only.

The original saves ``args`` as a pickled ``utils.config.Config`` (a ``dict`` subclass), which
``torch.load(weights_only=True)`` cannot rebuild, and full unpickling would run whatever the file asks for.
`restricted_pickle` stands in for the ``pickle`` module in ``torch.load(..., pickle_module=restricted_pickle)``:
its ``find_class`` hands out only what a tensor checkpoint needs and maps the two ``utils.config`` classes to
local dict stubs; anything else is refused before any of it can run.
"""
import _compat_pickle
import collections
import io
import pickle
import types
from typing import Any, BinaryIO, Dict, Tuple

import torch

__all__ = ['UnsafeCheckpointError', 'restricted_pickle']


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
