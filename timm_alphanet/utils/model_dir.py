"""Checks for model folders we read later (``local-dir:``): config.json and model.safetensors, before timm loads them.

timm reads a ``local-dir:`` folder's ``config.json`` with ``json.load`` (no size or depth bound) and its weights
with the ``safetensors`` library. These checks refuse a corrupt, truncated or oversized folder first, with a
one-line ValueError naming the file. The safetensors library does the validation of the tensor file (header
JSON, dtypes, offsets covering the data); what is added is a bound on the header before it is read, and
messages that name the file.
"""
import os
import re
import struct
import sys
from typing import Any, Dict, Mapping, Tuple

from .files import PathLike, regular_file_size
from .messages import bounded_repr, display_path, short_message
from .trees import read_json_file

__all__ = ['MAX_CONFIG_BYTES', 'MAX_NUM_CLASSES', 'MAX_SAFETENSORS_HEADER', 'check_safetensors', 'check_model_dir',
           'check_model_spec', 'check_num_classes', 'check_saved_model_args']

MAX_CONFIG_BYTES = 1 << 20  # a timm config.json is ~1 KB (more with a search space in model_args)
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit on its JSON header
# classes a saved config may ask for: the largest label sets in use (ImageNet-21k: 21843) are far below, and a head of
# 1e6 x 1280 float32 is already 5 GB; a forged 10**9 would make timm allocate the head before anything fails
MAX_NUM_CLASSES = 1_000_000
# options that turn a model into something other than the classifier a model folder holds: timm builds a feature
# extractor (features_only fails deep inside timm for our models) or drops what the weights hold
_NOT_A_CLASSIFIER = ('features_only', 'out_indices', 'feature_cls')


def check_safetensors(path: PathLike) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """Checks that `path` is a complete, well-formed safetensors file; returns its tensors' dtypes and shapes.

    Raises:
        TypeError: `path` is not a path.
        FileNotFoundError: the file does not exist.
        ValueError: a directory, empty or truncated, a header length beyond the file or the format's limit,
            or anything the safetensors library refuses (bad header JSON, offsets outside the data); the
            message names the file.
    """
    size = regular_file_size(path, 'safetensors file')
    name = display_path(path)
    if size < 8:
        raise ValueError(f'{name}: truncated safetensors file ({size} bytes; the header length alone takes 8)')
    with open(path, 'rb') as f:
        (header_len,) = struct.unpack('<Q', f.read(8))
    if header_len > MAX_SAFETENSORS_HEADER or header_len > size - 8:
        raise ValueError(f'{name}: not a valid safetensors file: its header claims {header_len} bytes, but the '
                         f'file has {size - 8} after the length (and the format allows {MAX_SAFETENSORS_HEADER})')
    from safetensors import safe_open  # the library validates the header and that offsets cover the data

    try:
        with safe_open(os.fspath(path), framework='pt') as st:
            out = {}
            for key in st.keys():
                piece = st.get_slice(key)
                out[key] = (piece.get_dtype(), tuple(piece.get_shape()))
            return out
    except Exception as e:  # noqa: BLE001 -- SafetensorError and whatever else a corrupt file makes it raise
        raise ValueError(f'{name}: not a valid safetensors file ({short_message(e)})') from None


def _arch_name(value: str) -> bool:
    """Whether `value` can only be an arch name (``a3``, ``alphanet_a3``, ``max``), never a file: letters, digits and
    underscores (the model's own resolver then refuses a name it does not know)."""
    return re.fullmatch(r'[A-Za-z0-9_]{1,40}', value.strip()) is not None


def check_saved_model_args(model_args: Any, where: str) -> None:
    """Refuse model arguments from a saved config.json (``model_args`` of a model folder or Hub repository) that
    would make the model read a file: the search space must be inline (a mapping, as `save_pretrained` and
    alphanet-export write it), the arch inline or one of the paper's names, never a path (which would be read
    relative to the current directory, wherever it points).

    Args:
        model_args: the config's ``model_args`` (None: none).
        where: what the config is, for the message (the config.json's path, or ``hf-hub:<repo>``).

    Raises:
        ValueError: one line naming `where`, the field and its (bounded) value.
    """
    if model_args is None:
        return
    if not isinstance(model_args, Mapping):
        raise ValueError(f'{where}: model_args must be a mapping, got {type(model_args).__name__}')
    space = model_args.get('space')
    if space is not None and not isinstance(space, Mapping):
        raise ValueError(f'{where}: model_args.space must be the search space inline (a mapping, as alphanet-export '
                         f'writes it), not a path or other value: {bounded_repr(space)}')
    arch = model_args.get('arch')
    if arch is not None and not isinstance(arch, Mapping) and not (isinstance(arch, str) and _arch_name(arch)):
        raise ValueError(f'{where}: model_args.arch must be the arch inline (a mapping, as alphanet-export writes it) '
                         f'or a paper arch name, not a path or other value: {bounded_repr(arch)}')
    for key in _NOT_A_CLASSIFIER:
        if key in model_args:
            raise ValueError(f'{where}: model_args.{key} is not allowed: a model folder holds a classifier, built as '
                             f'saved (got {key}={bounded_repr(model_args[key])})')
    if 'num_classes' in model_args:
        check_num_classes(model_args['num_classes'], f'{where}: model_args.num_classes')


def check_num_classes(value: Any, what: str) -> int:
    """A saved number of classes: an int in [0, MAX_NUM_CLASSES] (0: no classifier); ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NUM_CLASSES:
        raise ValueError(f'{what} must be a whole number from 0 to {MAX_NUM_CLASSES}, got {bounded_repr(value)}')
    return value


def check_model_dir(path: PathLike) -> Dict[str, Any]:
    """Checks a timm model folder (``local-dir:`` layout): config.json, and model.safetensors if present.

    Returns:
        The parsed config.json.

    Raises:
        FileNotFoundError: the folder or its config.json does not exist.
        ValueError: not a folder, config.json unreadable/too large/not a JSON object, model_args that name a file
            (`check_saved_model_args`), or a bad safetensors file.
    """
    name = display_path(path)
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f'model folder not found: {name}')
        raise ValueError(f'{name}: not a folder (a model folder holds config.json and model.safetensors)')
    config = read_json_file(os.path.join(path, 'config.json'), max_bytes=MAX_CONFIG_BYTES, what='config.json')
    if not isinstance(config, dict):
        raise ValueError(f'{display_path(os.path.join(path, "config.json"))}: expected a JSON object, got '
                         f'{type(config).__name__}')
    where = display_path(os.path.join(path, 'config.json'))
    check_saved_model_args(config.get('model_args'), where)
    _check_architecture(config.get('architecture'), config.get('model_args'), where)
    for key in _NOT_A_CLASSIFIER:
        if key in config:
            raise ValueError(f'{where}: {key} is not allowed: a model folder holds a classifier, built as saved (got '
                             f'{key}={bounded_repr(config[key])})')
    pretrained_cfg = config.get('pretrained_cfg')
    classes = {f'{field}num_classes': cfg['num_classes'] for field, cfg in
               (('', config), ('pretrained_cfg.', pretrained_cfg), ('model_args.', config.get('model_args')))
               if isinstance(cfg, Mapping) and 'num_classes' in cfg}
    for field, value in classes.items():
        check_num_classes(value, f'{where}: {field}')
    weights = os.path.join(path, 'model.safetensors')
    if os.path.lexists(weights):
        shapes = check_safetensors(weights)
        _check_classifier_rows(shapes, pretrained_cfg, classes, where)
    # a folder with timm's pytorch_model.bin instead passes: timm reads it with torch.load(weights_only=True), and
    # this package's own loaders (supernets, export) need model.safetensors and say so
    return config


def _check_architecture(architecture: Any, model_args: Any, where: str) -> None:
    """The config's architecture: a model name that timm knows and that takes what model_args hold.

    This module stays torch-free, so timm's registry is asked only when timm is already imported -- which every
    caller that goes on to create the model has done (check_model_spec/check_model_dir run just before
    ``timm.create_model``)."""
    if not isinstance(architecture, str) or not re.fullmatch(r'[A-Za-z0-9_.\-]{1,100}', architecture):
        raise ValueError(f'{where}: architecture must be a model name, got {bounded_repr(architecture)}')
    timm = sys.modules.get('timm')
    if timm is None:
        return
    try:
        entry = timm.models.model_entrypoint(architecture)
    except Exception:  # noqa: BLE001 -- timm raises RuntimeError('Unknown model ...')
        raise ValueError(f'{where}: architecture {bounded_repr(architecture)} is not a model timm knows (a '
                         'timm_alphanet model folder names one of its models, e.g. alphanet_a0)') from None
    ours = str(getattr(entry, '__module__', '')).startswith('timm_alphanet.')
    if isinstance(model_args, Mapping) and ('space' in model_args or 'arch' in model_args) and not ours:
        raise ValueError(f'{where}: architecture {bounded_repr(architecture)} does not take the search space / '
                         'arch its model_args hold (only timm_alphanet models do): the config does not describe '
                         'these weights')


def _check_classifier_rows(shapes: Mapping[str, Tuple[str, Tuple[int, ...]]], pretrained_cfg: Any,
                           classes: Mapping[str, Any], where: str) -> None:
    """Every num_classes the config states must match the rows of the classifier the weights hold (when the config
    names its classifier): timm would build the head the config asks for and then fail, or allocate, on loading."""
    head = pretrained_cfg.get('classifier') if isinstance(pretrained_cfg, Mapping) else None
    if not isinstance(head, str):
        return
    shape = shapes.get(f'{head}.weight', (None, ()))[1]
    if not shape:
        return
    for field, value in classes.items():
        if value not in (0, shape[0]):  # 0: built without a head (timm then drops the classifier's weights)
            raise ValueError(f'{where}: {field} {value} does not match the weights ({head}.weight has {shape[0]} '
                             'rows)')


def check_model_spec(spec: str) -> None:
    """Runs `check_model_dir` on a ``local-dir:<folder>`` model name; other names (timm, ``hf-hub:``) pass."""
    if isinstance(spec, str) and spec.startswith('local-dir:'):
        check_model_dir(spec[len('local-dir:'):])
