"""A restricted unpickler for original AlphaNet/AttentiveNAS checkpoints: dense tensors and plain data only.

The original saves ``args`` as a pickled ``utils.config.Config`` (a ``dict`` subclass), which
``torch.load(weights_only=True)`` cannot rebuild, and full unpickling would run whatever the file asks for.
`restricted_pickle` stands in for the ``pickle`` module in ``torch.load(..., pickle_module=restricted_pickle)``.
Like torch's own weights-only unpickler (``torch._weights_only_unpickler``) it runs the pure-Python opcode loop
(``pickle._Unpickler``) so that every global, every call and every state update can be checked:

- **Globals** resolve only to the allow-list below; anything else is refused before any of it can run.
- **Calls** (REDUCE, NEWOBJ, INST, OBJ) go only to our own constructors, each checking its arguments. Classes
  such as ``torch.Tensor`` and the storage types are values, never called (``torch.Tensor(n)`` would
  allocate n floats, ``bytearray(n)`` n bytes).
- **State updates** (BUILD) only on the ``utils.config`` stubs, the numpy dtype stand-in and OrderedDict
  attributes (a state dict's ``_metadata``); items only into dicts, lists and sets, whose keys must hash
  without collisions by construction (str, bytes, floats, ints below 2**61 - 1, ...).
- **Sizes**: a length field cannot make us allocate more than the file holds (reads are chunked), and the
  tensor storages the file declares count against the file's size (`storage_limit`).

Allowed, compared with ``torch.load(weights_only=True)`` (torch 2.x ``_get_allowed_globals``):

- the same for dense tensors and Parameters: ``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``,
  ``_rebuild_tensor_v3``, ``_rebuild_parameter``, ``_rebuild_parameter_with_state`` and
  ``torch._tensor._rebuild_from_type_v2`` (only with those and Tensor/Parameter, no tensor attributes or
  backward hooks), storage types, dtypes, ``torch.Size``, ``torch.device``, ``OrderedDict``, ``Counter``,
  ``set``, ``complex``, ``bytearray`` (only from bytes) and ``_codecs.encode`` (only latin-1, which is how
  protocol 2 stores bytes; other codecs grow data, repeatedly);
- less: no quantized, sparse, nested, meta or device-moved tensors, layouts or qschemes (the original
  checkpoints hold plain float and int tensors);
- more: ``utils.config.AttrDict`` / ``Config`` and ``argparse.Namespace`` as local dict stubs (the original
  pickles ``args`` as a Config, whose items torch's unpickler cannot fill), ``frozenset``, and numpy numeric
  scalars (``np.float64(77.5)``, kinds b/i/u/f/c) through our own constructor. Never numpy's ``dtype``,
  ``ndarray`` or ``_reconstruct``: with those a file can set dtype flags or make object arrays whose pointers
  are read from the file (a crash, or worse). The original training code puts only YAML values and
  command-line values into ``args`` and plain floats into the scheduler state, so it never needs numpy
  arrays; numpy scalars are kept for checkpoints whose ``args`` hold a best accuracy or step. Only inside
  `numpy_arrays()` (for Accelerate's RNG state files, which hold numpy's generator key): plain numeric C-order
  arrays, rebuilt by ``numpy.frombuffer`` from the checked dtype stand-in and the file's bytes, still never by
  numpy's ``_reconstruct``.
"""
import _compat_pickle
import collections
import contextlib
import contextvars
import io
import pickle
import types
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from ..utils import INT_HASH_MODULUS, bounded_repr

__all__ = ['UnsafeCheckpointError', 'numpy_arrays', 'restricted_pickle', 'storage_limit']


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asks for a Python global or call that a plain tensor checkpoint never needs."""


_READ_CHUNK = 1 << 20  # read long fields in pieces, so a forged length costs what the file really holds


# ---------------------------------------------------------------------------------------------------------
# stand-ins for the original ``utils.config`` classes and ``argparse.Namespace``
class _AttrDictStub(dict):
    """Stands in for ``utils.config.AttrDict`` while unpickling: a plain dict, nothing of the original class."""

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


_STUBS = (_AttrDictStub, _ConfigStub, _NamespaceStub)


# ---------------------------------------------------------------------------------------------------------
# argument checks of our constructors
def _refuse(what: str) -> UnsafeCheckpointError:
    if _NUMPY_ARRAYS.get():  # reading an RNG state file (`numpy_arrays`), not an original checkpoint
        return UnsafeCheckpointError(f'refusing {what}: an RNG state file only needs generator states; nothing from '
                                     'it was run')
    return UnsafeCheckpointError(
        f'refusing {what}: an original AlphaNet/AttentiveNAS checkpoint only needs tensors, plain containers '
        f'and the utils.config classes. The file may try to run code or exhaust memory; nothing from it was run.')


def _check_args(name: str, args: Any, *kinds: Tuple[type, ...], optional: int = 0) -> Tuple[Any, ...]:
    """`args` is a tuple of len(kinds) - optional .. len(kinds) values, each an instance of its kinds."""
    if not isinstance(args, tuple) or not len(kinds) - optional <= len(args) <= len(kinds) or not all(
            isinstance(a, k) for a, k in zip(args, kinds)):
        raise _refuse(f'the call {name}{bounded_repr(args)}')
    return args


def _check_key(key: Any) -> Any:
    """Dict keys and set items: types whose hashes cannot be forged to collide (which makes inserts quadratic)."""
    if isinstance(key, bool) or key is None or isinstance(key, (str, bytes, float)):
        return key
    if isinstance(key, int) and -INT_HASH_MODULUS < key < INT_HASH_MODULUS:
        return key
    raise _refuse(f'a dict key or set item {bounded_repr(key)} of type {type(key).__name__}')


def _pairs(items: List[Any]) -> Iterator[Tuple[Any, Any]]:
    """Key/value pairs of a SETITEMS/DICT run, keys checked."""
    if len(items) % 2:
        raise pickle.UnpicklingError(f'odd number of items ({len(items)}) for a dict')
    for i in range(0, len(items), 2):
        yield _check_key(items[i]), items[i + 1]


def _ordered_dict(*args: Any) -> 'collections.OrderedDict[Any, Any]':
    (pairs,) = _check_args('OrderedDict', args, (list, tuple), optional=1) or ((),)
    out: 'collections.OrderedDict[Any, Any]' = collections.OrderedDict()
    for pair in pairs:
        key, value = _check_args('OrderedDict item', pair if isinstance(pair, tuple) else None, object, object)
        out[_check_key(key)] = value
    return out


def _counter(*args: Any) -> 'collections.Counter[Any]':
    (counts,) = _check_args('Counter', args, dict, optional=1) or ({},)
    return collections.Counter({_check_key(k): v for k, v in counts.items()})


def _set(*args: Any) -> set:
    (items,) = _check_args('set', args, (list, tuple, set, frozenset), optional=1) or ((),)
    return {_check_key(item) for item in items}


def _frozenset(*args: Any) -> frozenset:
    return frozenset(_set(*args))


def _complex(*args: Any) -> complex:
    real_number = (int, float)
    return complex(*_check_args('complex', args, real_number, real_number, optional=1))


_LATIN1 = ('latin1', 'latin-1', 'iso-8859-1', 'iso8859-1', 'l1')


def _encode(*args: Any) -> bytes:
    """``_codecs.encode(text, 'latin1')``: how pickle protocol 2 stores bytes. Other codecs are refused."""
    text, *rest = _check_args('_codecs.encode', args, str, str, optional=1)
    encoding = rest[0] if rest else 'utf-8'  # the codecs default, refused below
    if encoding.lower() not in _LATIN1:
        raise _refuse(f'_codecs.encode with the codec {bounded_repr(encoding)} (only latin-1 stores bytes)')
    return text.encode('latin-1')


def _bytearray(*args: Any) -> bytearray:
    """``bytearray(bytes)`` or ``bytearray(str, 'latin-1')`` as pickle writes them; never ``bytearray(n)``."""
    if len(args) == 2:
        return bytearray(_encode(*args))
    (data,) = _check_args('bytearray', args, (bytes, bytearray), optional=1) or (b'',)
    return bytearray(data)


def _size(*args: Any) -> torch.Size:
    (dims,) = _check_args('torch.Size', args, (list, tuple))
    if not all(isinstance(d, int) for d in dims):
        raise _refuse(f'torch.Size{bounded_repr(args)}')
    return torch.Size(dims)


def _device(*args: Any) -> torch.device:
    return torch.device(*_check_args('torch.device', args, str, int, optional=1))


# ---------------------------------------------------------------------------------------------------------
# tensors
_STORAGES = (torch.storage.TypedStorage, torch.storage.UntypedStorage)


def _check_tensor_args(name: str, storage: Any, offset: Any, size: Any, stride: Any, hooks: Any) -> None:
    ints = (list, tuple)
    if not isinstance(storage, _STORAGES) or isinstance(offset, bool) or not isinstance(offset, int) \
            or not isinstance(size, ints) or not isinstance(stride, ints) \
            or not all(isinstance(v, int) for v in (*size, *stride)):
        raise _refuse(f'{name} with arguments of types '
                      f'{[type(a).__name__ for a in (storage, offset, size, stride)]}')
    if hooks:  # backward hooks would be called later; a checkpoint has none
        raise _refuse(f'{name} with backward hooks {bounded_repr(hooks)}')


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    _check_tensor_args('_rebuild_tensor', storage, storage_offset, size, stride, None)
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    _check_tensor_args('_rebuild_tensor_v2', storage, storage_offset, size, stride, backward_hooks)
    if metadata:  # tensor metadata (e.g. conjugate/negative bits) only from plain dicts of flags
        raise _refuse(f'_rebuild_tensor_v2 with metadata {bounded_repr(metadata)}')
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, bool(requires_grad),
                                           collections.OrderedDict())


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, dtype: Any, metadata: Any = None) -> torch.Tensor:
    _check_tensor_args('_rebuild_tensor_v3', storage, storage_offset, size, stride, backward_hooks)
    if not isinstance(dtype, torch.dtype) or metadata:
        raise _refuse(f'_rebuild_tensor_v3 with dtype {bounded_repr(dtype)} and metadata {bounded_repr(metadata)}')
    return torch._utils._rebuild_tensor_v3(storage, storage_offset, size, stride, bool(requires_grad),
                                           collections.OrderedDict(), dtype)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> torch.nn.Parameter:
    if type(data) is not torch.Tensor or backward_hooks or state:
        raise _refuse(f'_rebuild_parameter with data of type {type(data).__name__}, backward hooks '
                      f'{bounded_repr(backward_hooks)} or attributes {bounded_repr(state)}')
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """torch's wrapper for tensors of a subclass or with attributes: only our rebuilders, Tensor/Parameter."""
    if not any(func is f for f in _TENSOR_REBUILDERS) or new_type not in (torch.Tensor, torch.nn.Parameter) \
            or not isinstance(args, tuple) or state:
        raise _refuse(f'_rebuild_from_type_v2 of {bounded_repr(func)} as {bounded_repr(new_type)} with '
                      f'attributes {bounded_repr(state)}')
    out = func(*args)
    return out if type(out) is new_type else out.as_subclass(new_type)


# ---------------------------------------------------------------------------------------------------------
# numpy scalars, without numpy's dtype / ndarray machinery
_NUMPY_KINDS = {'b': (1,), 'i': (1, 2, 4, 8), 'u': (1, 2, 4, 8), 'f': (2, 4, 8), 'c': (8, 16)}


class _NumpyDtype:
    """Stands in for ``numpy.dtype`` while unpickling: only numeric type strings such as 'f8', no flags/fields."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        ok = isinstance(spec, str) and len(spec) in (2, 3) and spec[0] in _NUMPY_KINDS and spec[1:].isdigit() \
            and int(spec[1:]) in _NUMPY_KINDS[spec[0]] and align in (False, 0) and isinstance(copy, (bool, int))
        if not ok:
            raise _refuse(f'the numpy dtype {bounded_repr(spec)} (only numeric scalars: kinds b/i/u/f/c)')
        self.spec = spec
        self.byteorder = '|' if spec[1:] == '1' else '='

    def __setstate__(self, state: Any) -> None:
        # numpy pickles (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]);
        # for numeric types everything but the byte order is empty: anything else could set object flags
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4) \
                or state[1] not in ('<', '>', '|', '=') or any(v is not None for v in state[2:5]) \
                or state[5:8] != (-1, -1, 0) or (len(state) == 9 and state[8] is not None):
            raise _refuse(f'the numpy dtype state {bounded_repr(state)} (only plain numeric types)')
        self.byteorder = state[1]

    def numpy(self) -> Any:
        import numpy  # only imported when a checkpoint actually holds numpy scalars
        order = '=' if self.byteorder == '|' else self.byteorder
        return numpy.dtype(order + self.spec)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar(dtype, bytes)`` for numeric dtypes only."""
    if type(dtype) is not _NumpyDtype or not isinstance(data, bytes):
        raise _refuse(f'a numpy scalar of {bounded_repr(dtype)} from {type(data).__name__}')
    import numpy
    np_dtype = dtype.numpy()
    if len(data) != np_dtype.itemsize:
        raise _refuse(f'a numpy {dtype.spec} scalar from {len(data)} bytes (needs {np_dtype.itemsize})')
    return numpy.frombuffer(data, dtype=np_dtype)[0]


# plain numeric numpy arrays, only inside `numpy_arrays()` (Accelerate's RNG state files hold numpy's MT19937 key):
# rebuilt by numpy.frombuffer from the checked dtype stand-in and the file's bytes, never by numpy's _reconstruct
_NUMPY_ARRAYS: 'contextvars.ContextVar[bool]' = contextvars.ContextVar('numpy_arrays', default=False)
_MAX_ARRAY_DIMS = 8


class _NumpyArrayType:
    """Stands in for ``numpy.ndarray`` as the argument of ``_reconstruct``; never called."""


class _NumpyArray:
    """What ``_reconstruct(ndarray, (0,), b'b')`` makes: an empty placeholder that BUILD turns into the array."""


def _numpy_reconstruct(*args: Any) -> _NumpyArray:
    if args != (_NumpyArrayType, (0,), b'b'):
        raise _refuse(f'numpy _reconstruct{bounded_repr(args)} (only plain arrays)')
    return _NumpyArray()


def _numpy_array(state: Any) -> Any:
    """The array of an ndarray's pickled state (version, shape, dtype, is_fortran, raw bytes): numeric dtypes and
    C order only, and exactly as many bytes as the shape needs (the bytes were read from the file, so bounded)."""
    ok = isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[1], tuple) \
        and len(state[1]) <= _MAX_ARRAY_DIMS and all(type(n) is int and n >= 0 for n in state[1]) \
        and type(state[2]) is _NumpyDtype and state[3] is False and isinstance(state[4], bytes)
    if not ok:
        raise _refuse(f'the numpy array state {bounded_repr(state)} (only plain numeric C-order arrays)')
    import numpy
    dtype = state[2].numpy()
    count = 1
    for n in state[1]:
        count *= n
    if count * dtype.itemsize != len(state[4]):
        raise _refuse(f'a numpy array of shape {bounded_repr(state[1])} from {len(state[4])} bytes')
    return numpy.frombuffer(state[4], dtype=dtype).reshape(state[1]).copy()


_ARRAY_GLOBALS = {('numpy', 'ndarray'): _NumpyArrayType, ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
                  ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct}


@contextlib.contextmanager
def numpy_arrays() -> Iterator[None]:
    """Within the block, `restricted_pickle` also rebuilds plain numeric numpy arrays (see `_numpy_array`)."""
    token = _NUMPY_ARRAYS.set(True)
    try:
        yield
    finally:
        _NUMPY_ARRAYS.reset(token)


# ---------------------------------------------------------------------------------------------------------
# the allow-list
def _build_allowed_globals() -> Tuple[Dict[Tuple[str, str], Any], Dict[int, Any]]:
    """(module, name) -> object, and the objects that may be called (by id; see `_call`)."""
    callables: Dict[Tuple[str, str], Any] = {
        ('collections', 'OrderedDict'): _ordered_dict,
        ('collections', 'Counter'): _counter,
        ('builtins', 'set'): _set,
        ('builtins', 'frozenset'): _frozenset,
        ('builtins', 'complex'): _complex,
        ('builtins', 'bytearray'): _bytearray,
        ('_codecs', 'encode'): _encode,
        ('torch', 'Size'): _size,
        ('torch', 'device'): _device,
        ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
        ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
        ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
        ('argparse', 'Namespace'): _NamespaceStub,
        ('numpy', 'dtype'): _NumpyDtype,
    }
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # numpy 1 and 2
        callables[(module, 'scalar')] = _numpy_scalar
    values: Dict[Tuple[str, str], Any] = {
        ('torch', 'Tensor'): torch.Tensor,
        ('torch.nn.parameter', 'Parameter'): torch.nn.Parameter,
        ('torch.storage', 'TypedStorage'): torch.storage.TypedStorage,
        ('torch.storage', 'UntypedStorage'): torch.storage.UntypedStorage,
    }
    # dtypes (torch.float32, ...) are pickled as globals of ``torch``
    for name, value in vars(torch).items():  # vars(), not getattr(): no lazy submodule imports
        if isinstance(value, torch.dtype):
            values[('torch', name)] = value
    allowed = {**values, **callables}
    return allowed, {id(f): f for f in (*callables.values(), *_STUBS, _numpy_reconstruct)}


_ALLOWED_GLOBALS, _CALLABLES = _build_allowed_globals()


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
    if found is None and _NUMPY_ARRAYS.get():
        found = _ARRAY_GLOBALS.get((module, name))
    if found is not None:
        return found
    raise _refuse(f"to load global '{bounded_repr(module)[1:-1]}.{bounded_repr(name)[1:-1]}'")


# ---------------------------------------------------------------------------------------------------------
# storage sizes
_STORAGE_LIMIT: 'contextvars.ContextVar[Optional[int]]' = contextvars.ContextVar('storage_limit', default=None)


@contextlib.contextmanager
def storage_limit(max_bytes: Optional[int]) -> Iterator[None]:
    """Within this block, the tensor storages one pickle declares may total at most `max_bytes` (None: any).

    torch allocates each storage at the size the file declares before reading its data, so a tiny file
    could ask for terabytes; a checkpoint's storages are stored in the file, so its size is the bound.
    """
    token = _STORAGE_LIMIT.set(max_bytes)
    try:
        yield
    finally:
        _STORAGE_LIMIT.reset(token)


def _storage_nbytes(pid: Any) -> Tuple[Any, int]:
    """(root key, bytes) a torch storage persistent id declares: ('storage', type, key, location, numel, ...)."""
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ('storage', b'storage'):
        raise pickle.UnpicklingError(f'unsupported persistent id {bounded_repr(pid)}')
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError(f'a storage of {bounded_repr(numel)} elements')
    dtype = getattr(storage_type, 'dtype', None)
    item = torch._utils._element_size(dtype) if isinstance(dtype, torch.dtype) else 1  # UntypedStorage: bytes
    return (key if isinstance(key, (str, bytes, int)) else id(key)), numel * item


# ---------------------------------------------------------------------------------------------------------
# the unpickler
def _chunked(read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """`read(n)` that allocates only what the file holds (a file's read(n) allocates n bytes up front)."""

    def read_chunked(n: int = -1) -> bytes:
        if n is None or n < 0 or n <= _READ_CHUNK:
            return read(n)
        parts: List[bytes] = []
        while n > 0:
            part = read(min(n, _READ_CHUNK))
            if not part:
                break
            parts.append(part)
            n -= len(part)
        return b''.join(parts)
    return read_chunked


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler with the checks of the module docstring on every global, call and update."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: BinaryIO, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._file_read = _chunked(self._file_read)
        self._storage_left = _STORAGE_LIMIT.get()
        self._storages_seen: set = set()

    def find_class(self, module: str, name: str) -> Any:
        return _find_allowed_global(module, name)

    def _call(self, func: Any, args: Any) -> Any:
        if _CALLABLES.get(id(func)) is not func:
            raise _refuse(f'to call {bounded_repr(func)}')
        if not isinstance(args, tuple):
            raise _refuse(f'a call with arguments {bounded_repr(args)}')
        if func in _STUBS:
            if args:
                raise _refuse(f'{func.__name__}{bounded_repr(args)}')
            return func()
        return func(*args)

    def _instantiate(self, klass: Any, args: List[Any]) -> None:  # INST and OBJ (protocols 0 and 1)
        self.append(self._call(klass, tuple(args)))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if kwargs:
            raise _refuse(f'keyword arguments {bounded_repr(kwargs)}')
        self.append(self._call(cls, args))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, (_AttrDictStub, _NumpyDtype)):
            inst.__setstate__(state)
        elif type(inst) is _NumpyArray:
            self.stack[-1] = _numpy_array(state)  # a memo reference to the placeholder stays one (and is refused)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict) \
                and all(isinstance(k, str) for k in state):
            inst.__dict__.update(state)  # a state dict's ``_metadata``
        else:
            raise _refuse(f'to set the state of a {type(inst).__name__} object')
    dispatch[pickle.BUILD[0]] = load_build

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target(list, 'append to').append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target(list, 'append to').extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target(dict, 'set items of')[_check_key(key)] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._target(dict, 'set items of').update(_pairs(items))
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self) -> None:
        self.append(dict(_pairs(self.pop_mark())))
    dispatch[pickle.DICT[0]] = load_dict

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target(set, 'add items to').update(_check_key(item) for item in items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        self.append(frozenset(_check_key(item) for item in self.pop_mark()))
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def _target(self, kind: type, verb: str) -> Any:
        target = self.stack[-1] if self.stack else None
        if not isinstance(target, kind):
            raise _refuse(f'to {verb} a {type(target).__name__} object')
        return target

    def load_persid(self) -> None:
        raise _refuse('text persistent ids (torch never writes them)')
    dispatch[pickle.PERSID[0]] = load_persid

    def load_binpersid(self) -> None:
        pid = self.stack.pop()
        key, nbytes = _storage_nbytes(pid)
        if self._storage_left is not None and key not in self._storages_seen:
            self._storages_seen.add(key)
            self._storage_left -= nbytes
            if self._storage_left < 0:
                raise ValueError(f'the file declares a tensor storage of {nbytes} bytes, more than the file '
                                 f'holds (truncated or forged)')
        self.append(self.persistent_load(pid))
    dispatch[pickle.BINPERSID[0]] = load_binpersid


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
