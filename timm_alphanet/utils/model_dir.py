"""Checks for model folders we read later (``local-dir:``): config.json and model.safetensors, before timm loads them.

timm reads a ``local-dir:`` folder's ``config.json`` with ``json.load`` (no size or depth bound) and its weights
with the ``safetensors`` library. These checks refuse a corrupt, truncated or oversized folder first, with a
one-line ValueError naming the file. The safetensors library does the validation of the tensor file (header
JSON, dtypes, offsets covering the data); what is added is a bound on the header before it is read, and
messages that name the file.
"""
import os
import struct
from typing import Any, Dict, Tuple

from .files import PathLike, regular_file_size
from .messages import display_path, short_message
from .trees import read_json_file

__all__ = ['MAX_CONFIG_BYTES', 'MAX_SAFETENSORS_HEADER', 'check_safetensors', 'check_model_dir',
           'check_model_spec']

MAX_CONFIG_BYTES = 1 << 20  # a timm config.json is ~1 KB (more with a search space in model_args)
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit on its JSON header


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


def check_model_dir(path: PathLike) -> Dict[str, Any]:
    """Checks a timm model folder (``local-dir:`` layout): config.json, and model.safetensors if present.

    Returns:
        The parsed config.json.

    Raises:
        FileNotFoundError: the folder or its config.json does not exist.
        ValueError: not a folder, config.json unreadable/too large/not a JSON object, or a bad safetensors file.
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
    weights = os.path.join(path, 'model.safetensors')
    if os.path.lexists(weights):
        check_safetensors(weights)
    return config


def check_model_spec(spec: str) -> None:
    """Runs `check_model_dir` on a ``local-dir:<folder>`` model name; other names (timm, ``hf-hub:``) pass."""
    if isinstance(spec, str) and spec.startswith('local-dir:'):
        check_model_dir(spec[len('local-dir:'):])
